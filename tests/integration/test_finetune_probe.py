"""--probe: only the task head trains, on a frozen encoder (bit-identical after training, centralized
and federated), it learns on a real NCBI-disease slice, and the record says it was a probe. The
encoder's features are computed once per invocation (every epoch and seed, dev and test) and give
the scores of the uncached path, which re-runs the encoder on every batch."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import BertModel, RobertaModel

from fedbiobert.data.tokenizer import load_tokenizer
from fedbiobert.finetune import run
from fedbiobert.finetune.batching import epoch_order, training_batches
from fedbiobert.finetune.cli import finetune
from fedbiobert.finetune.modeling import RandomModelSize, build_random, freeze_encoder, load_pretrained
from fedbiobert.finetune.probe import encoder_features
from fedbiobert.finetune.run import PROBE_LR, encode, fine_tune, load_task_data
from fedbiobert.finetune.train import training_mode
from tests.conftest import SCIVOCAB, SHARED_DATA
from tests.support.finetune_helpers import options, save_small_encoder, tiny_model_args

NCBI = SHARED_DATA / "ner" / "ncbi_disease"
ABSTRACTS = SHARED_DATA / "classification" / "medical_abstracts"
SLICE = ["--max_train_sentences", "64", "--max_test_sentences", "16", "--batch_size", "8", "--max_len", "48"]
pytestmark = pytest.mark.skipif(not NCBI.is_dir() or not ABSTRACTS.is_dir(), reason="needs ../shared/data")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return save_small_encoder(tmp_path_factory.mktemp("export") / "round1", SCIVOCAB)


@pytest.fixture(scope="module")
def roberta_dir(tmp_path_factory) -> Path:
    return save_small_encoder(tmp_path_factory.mktemp("export") / "roberta", SCIVOCAB, arch="roberta")


@pytest.fixture(scope="module")
def ncbi():
    return load_task_data("ner", NCBI, 64, 16, 0.1)


@pytest.fixture(scope="module")
def abstracts():
    return load_task_data("classification", ABSTRACTS, 64, 16, 0.1)


def probe_options(model_dir: Path, *extra: str, data: Path = NCBI):
    return options("--data", str(data), "--model", str(model_dir), "--probe", *SLICE, *extra)


def assert_only_the_head_changed(model, model_dir: Path, num_labels: int, seed: int) -> None:
    start = load_pretrained(model_dir, "ner", num_labels, None, 48, seed=seed)[0].state_dict()
    end = model.state_dict()
    encoder = [name for name in start if not name.startswith("classifier.")]
    assert len(encoder) > 10
    for name in encoder:
        assert torch.equal(start[name], end[name]), f"{name} moved"
    assert not torch.equal(start["classifier.weight"], end["classifier.weight"])


def test_centralized_probe_keeps_the_encoder_and_learns(model_dir, ncbi):
    outcome = fine_tune(probe_options(model_dir, "--epochs", "4", "--lr", "1e-2", "--patience", "0"), ncbi, seed=3)
    assert_only_the_head_changed(outcome.model, model_dir, len(ncbi.labels), seed=3)
    assert outcome.record["trained_parameters"] == 16 * len(ncbi.labels) + len(ncbi.labels)
    first, last = outcome.losses[:4], outcome.losses[-4:]
    assert sum(last) / 4 < 0.8 * sum(first) / 4, outcome.losses  # the head learns from the fixed features
    assert 0.0 <= outcome.record["conlleval_f1"] <= 1.0


def test_federated_probe_averages_the_head_only(model_dir, ncbi):
    outcome = fine_tune(probe_options(model_dir, "--mode", "federated", "--n_clients", "3", "--rounds", "2"),
                        ncbi, seed=5)
    assert_only_the_head_changed(outcome.model, model_dir, len(ncbi.labels), seed=5)


def test_record_says_probe_and_the_probe_default_lr(model_dir):
    record = finetune(probe_options(model_dir, "--epochs", "1"))
    assert record["probe"] is True and record["runs"][0]["lr"] == PROBE_LR
    assert finetune(probe_options(model_dir, "--epochs", "1", "--probe", "False", "--lr", "1e-4"))["probe"] is False


def test_classification_probe_trains_classifier_and_pooler_with_a_frozen_encoder_in_eval_mode():
    model, _ = build_random(RandomModelSize("bert", 16, 1, 2, 32), "classification", 5, str(SCIVOCAB), 32, seed=0)
    head = freeze_encoder(model)
    assert head == ["bert.pooler.dense.weight", "bert.pooler.dense.bias", "classifier.weight", "classifier.bias"]
    assert [name for name, param in model.named_parameters() if param.requires_grad] == head
    training_mode(model)
    assert not model.bert.encoder.training and not model.bert.embeddings.training  # no dropout: fixed features
    assert model.bert.pooler.training and model.classifier.training


def flat(record: dict, prefix: str = "") -> dict:
    """A record's leaves (in dicts and lists) under dotted names (pytest.approx compares flat dicts only)."""
    leaves = {}
    for key, value in record.items():
        if isinstance(value, list):  # per-round logs such as dev_history: one dotted name per entry
            value = dict(enumerate(value))
        leaves.update(flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return leaves


def uncached_fine_tune(monkeypatch, *args):
    with monkeypatch.context() as patch:
        patch.setattr(run, "_CACHE_PROBE_FEATURES", False)
        return fine_tune(*args)


@pytest.mark.parametrize("arch,task,mode", [("bert", "ner", "centralized"), ("bert", "ner", "federated"),
                                            ("roberta", "ner", "centralized"),
                                            ("bert", "classification", "centralized"),
                                            ("roberta", "classification", "federated")])
def test_cached_probe_scores_as_the_uncached_path(monkeypatch, model_dir, roberta_dir, ncbi, abstracts, arch,
                                                  task, mode):
    folder, task_data = (model_dir if arch == "bert" else roberta_dir), (ncbi if task == "ner" else abstracts)
    extra = ["--epochs", "3", "--lr", "1e-2", "--patience", "0", "--mode", mode, "--n_clients", "2", "--rounds", "2"]
    probe = probe_options(folder, *extra, data=NCBI if task == "ner" else ABSTRACTS)
    cached = fine_tune(probe, task_data, 4)
    uncached = uncached_fine_tune(monkeypatch, probe, task_data, 4)
    assert cached.losses == pytest.approx(uncached.losses, rel=1e-4, abs=1e-6)  # same batches, same dropout masks
    assert cached.record.pop("train_seconds") >= 0 and uncached.record.pop("train_seconds") >= 0
    assert flat(cached.record) == pytest.approx(flat(uncached.record), abs=1e-6)
    for name, value in uncached.model.state_dict().items():
        torch.testing.assert_close(cached.model.state_dict()[name], value, rtol=1e-4, atol=1e-5)
    assert "forward" not in vars(cached.model)  # the model runs its own forward again afterwards


@pytest.mark.parametrize("arch,task", [("bert", "ner"), ("roberta", "ner"), ("bert", "classification")])
def test_cached_features_are_those_of_the_batched_encoder(model_dir, roberta_dir, ncbi, arch, task):
    """Each example's cached features (length-sorted batches) equal what the encoder gives it inside
    the shuffled, differently padded training batches of the uncached path."""
    model, tokenizer = load_pretrained(model_dir if arch == "bert" else roberta_dir, task, 3, None, 48, seed=0)
    examples = encode(ncbi, ncbi.train, tokenizer, 48)
    freeze_encoder(model)
    cached = encoder_features(model, examples, tokenizer.pad_token_id, 64)
    model.eval()
    order = epoch_order(len(examples), 7)
    with torch.no_grad():
        for start, batch in zip(range(0, len(order), 8), training_batches(examples, 8, 7, tokenizer.pad_token_id)):
            hidden = model.base_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])[0]
            for row, index in enumerate(order[start:start + 8]):
                length = len(examples[index].input_ids)
                expected = hidden[row, :length] if task == "ner" else hidden[row, 0]
                torch.testing.assert_close(cached[index], expected, rtol=0, atol=1e-5)
    assert {value.shape[0] for value in cached} == ({len(example.input_ids) for example in examples}
                                                    if task == "ner" else {16})


def count_encoder_rows(job) -> int:
    """Run `job`; how many example rows went through an encoder's forward (a forward hook on every
    real BertModel/RobertaModel call)."""
    rows = []

    def hook(module, args, output):
        if isinstance(module, (BertModel, RobertaModel)):
            rows.append(output[0].shape[0])

    handle = torch.nn.modules.module.register_module_forward_hook(hook)
    try:
        job()
    finally:
        handle.remove()
    return sum(rows)


def test_seeds_share_one_encoder_pass_per_split(monkeypatch, model_dir, ncbi, caplog):
    probe = probe_options(model_dir, "--epochs", "2", "--seeds", "1,2", "--patience", "0")
    tokenizer = load_pretrained(model_dir, "ner", len(ncbi.labels), None, 48, seed=0)[1]
    sizes = [len(encode(ncbi, items, tokenizer, 48)) for items in (ncbi.train, ncbi.dev, ncbi.test)]
    with caplog.at_level("INFO", logger="fedbiobert.finetune.probe"):
        records = []
        assert count_encoder_rows(lambda: records.append(finetune(probe))) == sum(sizes)
    computed = [message for message in caplog.messages if "computed once" in message]
    assert len(computed) == 1 and computed[0].startswith(f"probe: encoder features of {sum(sizes)} examples")
    with monkeypatch.context() as patch:
        patch.setattr(run, "_CACHE_PROBE_FEATURES", False)
        uncached_rows = count_encoder_rows(lambda: records.append(finetune(probe)))
    assert uncached_rows == 2 * (2 * sizes[0] + 2 * sizes[1] + sizes[2])  # per seed: 2 epochs, 2 dev evaluations, test
    cached, uncached = records
    assert cached["runs"][0]["conlleval_f1"] == pytest.approx(uncached["runs"][0]["conlleval_f1"], abs=1e-6)


def test_a_new_encoder_is_encoded_afresh(ncbi):
    """--model none draws a new random encoder per seed: each seed computes its own features."""
    probe = options("--data", str(NCBI), *tiny_model_args(SCIVOCAB), "--probe", *SLICE, "--epochs", "1",
                    "--seeds", "1,2")
    tokenizer = load_tokenizer(SCIVOCAB)
    sizes = [len(encode(ncbi, items, tokenizer, 48)) for items in (ncbi.train, ncbi.dev, ncbi.test)]
    assert count_encoder_rows(lambda: finetune(probe)) == 2 * sum(sizes)

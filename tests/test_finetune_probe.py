"""--probe: only the task head trains, on a frozen encoder (bit-identical after training, centralized
and federated), it learns on a real NCBI-disease slice, and the record says it was a probe."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fedbiobert.finetune.cli import finetune
from fedbiobert.finetune.modeling import RandomModelSize, build_random, freeze_encoder, load_pretrained
from fedbiobert.finetune.run import PROBE_LR, fine_tune, load_task_data
from fedbiobert.finetune.train import training_mode
from tests.conftest import SCIVOCAB, SHARED_DATA
from tests.finetune_helpers import options, save_small_encoder

NCBI = SHARED_DATA / "ner" / "ncbi_disease"
SLICE = ["--max_train_sentences", "64", "--max_test_sentences", "16", "--batch_size", "8", "--max_len", "48"]
pytestmark = pytest.mark.skipif(not NCBI.is_dir(), reason="needs ../shared/data")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return save_small_encoder(tmp_path_factory.mktemp("export") / "round1", SCIVOCAB)


@pytest.fixture(scope="module")
def ncbi():
    return load_task_data("ner", NCBI, 64, 16, 0.1)


def probe_options(model_dir: Path, *extra: str):
    return options("--data", str(NCBI), "--model", str(model_dir), "--probe", *SLICE, *extra)


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

"""The task head a pre-trained folder gets: drawn from the run's seed alone, whatever the global RNG
holds (so --seeds repeat, and every rank of a federated fine-tune starts from the same head)."""
from __future__ import annotations

import logging

import pytest
import torch

from fedbiobert.finetune.modeling import load_pretrained
from tests.support.finetune_helpers import save_small_encoder, write_vocab

HEAD = ("classifier.", "bert.pooler.")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    vocab = write_vocab(root / "vocab.txt")
    return {arch: save_small_encoder(root / arch, vocab, arch) for arch in ("bert", "roberta")}


def head_of(model) -> dict[str, torch.Tensor]:
    return {name: value.clone() for name, value in model.state_dict().items() if name.startswith(HEAD)}


def load(folder, task: str, seed: int):
    return load_pretrained(folder, task, 3, None, 32, seed=seed)[0]


@pytest.mark.parametrize("arch,task", [("bert", "ner"), ("bert", "classification"), ("roberta", "classification")])
def test_head_comes_from_the_seed_not_the_global_rng(folders, arch, task):
    torch.manual_seed(123)
    first = head_of(load(folders[arch], task, seed=7))
    torch.rand(1000)  # the global generator is somewhere else now
    again = head_of(load(folders[arch], task, seed=7))
    other = head_of(load(folders[arch], task, seed=8))
    expected = {"ner": {"classifier.weight", "classifier.bias"},
                "classification": {"classifier.weight", "classifier.bias", "bert.pooler.dense.weight",
                                   "bert.pooler.dense.bias"}}[task]
    if arch == "roberta":
        expected = {"classifier.dense.weight", "classifier.dense.bias", "classifier.out_proj.weight",
                    "classifier.out_proj.bias"}
    assert set(first) == expected
    for name in first:
        assert torch.equal(first[name], again[name]), name
    weights = [name for name in first if name.endswith("weight")]
    assert all(not torch.equal(first[name], other[name]) for name in weights)
    assert all(float(first[name].std()) == pytest.approx(0.02, rel=0.5) for name in weights)  # HF's init scale
    assert all(not first[name].any() for name in first if name.endswith("bias"))


def test_encoder_comes_from_the_folder_and_the_new_weights_are_logged(folders, caplog):
    with caplog.at_level(logging.INFO, logger="fedbiobert.finetune.modeling"):
        one = load(folders["bert"], "classification", seed=1)
    lines = [record.getMessage() for record in caplog.records if "newly initialised" in record.getMessage()]
    two = load(folders["bert"], "classification", seed=2)  # (another test may leave INFO on: read the log first)
    encoder = [name for name in one.state_dict() if not name.startswith(HEAD)]
    assert encoder and all(torch.equal(one.state_dict()[name], two.state_dict()[name]) for name in encoder)
    assert lines == ["newly initialised from seed 1: bert.pooler.dense.bias, bert.pooler.dense.weight, "
                     "classifier.bias, classifier.weight"]

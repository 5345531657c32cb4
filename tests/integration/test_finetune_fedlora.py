"""--algorithm fedlora on a real NCBI-disease slice: only adapters (and the head) are exchanged, the frozen
base ends bit-identical (weighted, adaptive), exact aggregation changes the base by the folded update only,
the record carries the bytes beside full-model FedAvg's, and bad LoRA options are one line."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fedbiobert.finetune.modeling import load_pretrained
from fedbiobert.finetune.run import fine_tune, load_task_data, prepare_model
from tests.conftest import SCIVOCAB, SHARED_DATA
from tests.integration.test_finetune_bad_inputs import fails_with, ner_folder
from tests.support.finetune_helpers import options, save_small_encoder

NCBI = SHARED_DATA / "ner" / "ncbi_disease"
SLICE = ["--max_train_sentences", "48", "--max_test_sentences", "16", "--batch_size", "8", "--max_len", "48"]
pytestmark = pytest.mark.skipif(not NCBI.is_dir(), reason="needs ../shared/data")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return save_small_encoder(tmp_path_factory.mktemp("export") / "round1", SCIVOCAB)


@pytest.fixture(scope="module")
def ncbi():
    return load_task_data("ner", NCBI, 48, 16, 0.1)


def lora_options(model_dir: Path, *extra: str):
    return options("--data", str(NCBI), "--model", str(model_dir), "--mode", "federated", "--algorithm", "fedlora",
                   "--n_clients", "2", "--rounds", "2", "--patience", "0", "--lora_rank", "4", *SLICE, *extra)


def test_only_adapters_and_the_head_are_exchanged(model_dir, ncbi):
    _, _, exchanged = prepare_model(lora_options(model_dir), ncbi, seed=1)
    assert exchanged and all(".lora_A." in key or ".lora_B." in key or key.startswith("classifier.")
                             for key in exchanged)
    assert any(key.startswith("classifier.") for key in exchanged)
    _, _, without_head = prepare_model(lora_options(model_dir, "--lora_exchange_head", "False"), ncbi, seed=1)
    assert without_head and not any(key.startswith("classifier.") for key in without_head)


@pytest.mark.parametrize("aggregation", ["weighted", "adaptive"])
def test_a_fedlora_run_changes_no_frozen_weight(model_dir, ncbi, aggregation):
    outcome = fine_tune(lora_options(model_dir, "--aggregation", aggregation), ncbi, seed=2)
    start = load_pretrained(model_dir, "ner", len(ncbi.labels), None, 48, seed=2)[0].state_dict()
    end = outcome.model.state_dict()
    for name, value in start.items():
        trained_name = name.replace(".weight", ".base_layer.weight").replace(".bias", ".base_layer.bias") \
            if f"{name.rsplit('.', 1)[0]}.base_layer.weight" in end else name
        if name.startswith("classifier."):
            assert not torch.equal(value, end[name])  # the head trains
            continue
        assert torch.equal(value, end[trained_name]), f"{name} moved"
    assert any(torch.count_nonzero(value) for key, value in end.items() if ".lora_B." in key)  # adapters trained
    record = outcome.record
    assert record["aggregation"] == aggregation
    assert record["bytes_up_per_silo"] < 0.05 * record["full_model_bytes_per_silo"]
    assert record["bytes_up_per_round"] == 2 * record["bytes_up_per_silo"]
    if aggregation == "adaptive":
        weights = record["rounds_log"][0]["weights"]
        assert set(weights) == {0, 1} and sum(weights.values()) == pytest.approx(1.0)


def test_exact_aggregation_moves_only_the_adapted_base_weights(model_dir, ncbi):
    outcome = fine_tune(lora_options(model_dir, "--aggregation", "exact"), ncbi, seed=2)
    start = load_pretrained(model_dir, "ner", len(ncbi.labels), None, 48, seed=2)[0].state_dict()
    end = outcome.model.state_dict()
    query = "bert.encoder.layer.0.attention.self.query"
    assert not torch.equal(start[query + ".weight"], end[query + ".base_layer.weight"])  # the update, folded in
    assert torch.equal(start["bert.embeddings.word_embeddings.weight"], end["bert.embeddings.word_embeddings.weight"])
    assert torch.equal(start["bert.encoder.layer.0.intermediate.dense.weight"],
                       end["bert.encoder.layer.0.intermediate.dense.weight"])
    assert outcome.record["bytes_down_per_silo"] > outcome.record["bytes_up_per_silo"]  # every silo's adapters


def test_full_model_fedavg_reports_its_bytes_too(model_dir, ncbi):
    record = fine_tune(options("--data", str(NCBI), "--model", str(model_dir), "--mode", "federated",
                               "--n_clients", "2", "--rounds", "1", *SLICE), ncbi, seed=2).record
    assert record["bytes_up_per_silo"] == record["full_model_bytes_per_silo"]
    assert record["communication_vs_full_model"] == 1.0


@pytest.mark.parametrize("extra, expected", [
    (["--lora_rank", "0"], "--lora_rank 0 (accepted: an integer >= 1)"),
    (["--lora_rank", "999"], "--lora_rank 999 exceeds the width 16"),
    (["--lora_targets", "qkv"], "no linear module 'qkv'"),
    (["--mode", "centralized"], "--algorithm fedlora with --mode centralized"),
    (["--aggregation", "exact", "--server_optimizer", "fedadam"], "--aggregation exact with --server_optimizer"),
])
def test_bad_lora_options_are_one_line(tmp_path, capsys, model_dir, extra, expected):
    folder = ner_folder(tmp_path)
    base = ["--data", str(folder), "--model", str(model_dir), "--mode", "federated", "--algorithm", "fedlora",
            "--n_clients", "1", "--max_len", "48"]
    fails_with(capsys, tmp_path, [*base, *extra], expected)


def test_fedlora_needs_a_pretrained_model(tmp_path, capsys):
    folder = ner_folder(tmp_path)
    fails_with(capsys, tmp_path, ["--data", str(folder), "--model", "none", "--tokenizer", str(SCIVOCAB),
                                  "--mode", "federated", "--algorithm", "fedlora", "--n_clients", "1"],
               "--algorithm fedlora with --model none")


def test_the_bytes_benchmark_uses_the_fine_tuners_accounting(model_dir):
    from fedbiobert.bench.lora_bytes import rows
    table = {(row["rule"], row["rank"]): row for row in rows(str(model_dir), [4], "query,value", silos=2)}
    full, weighted = table[("full-model FedAvg", None)], table[("fedlora weighted/adaptive", 4)]
    assert full["vs_full"] == 1.0 and 0 < weighted["vs_full"] < 0.5
    assert table[("fedlora exact", 4)]["bytes_down_per_silo"] > weighted["bytes_down_per_silo"]

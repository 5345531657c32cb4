"""The `lora` experiment's plan, checks and table (no processes: the runs are in tests/processes)."""
from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from fedbiobert.bench.matrix import BenchError
from fedbiobert.experiments import lora
from fedbiobert.experiments.lora_report import markdown


def args(tmp_path: Path, **changes) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    lora.add_arguments(parser)
    model = tmp_path / "model"
    model.mkdir(exist_ok=True)
    (model / "config.json").write_text("{}")
    data = tmp_path / "data"
    (data / "ner" / "ncbi_disease").mkdir(parents=True, exist_ok=True)
    namespace = parser.parse_args(["--out", str(tmp_path / "out"), "--init_from", str(model), "--data_root", str(data)])
    for key, value in changes.items():
        setattr(namespace, key, value)
    return namespace


def test_the_plan_compares_like_for_like():
    rows = {row.name: row.flags for row in lora.finetune_rows(lora.PRESETS["small"])}
    assert "--algorithm" not in rows["fedavg (full model)"]
    assert ("--aggregation", "adaptive") == rows["skewed: fedlora adaptive (Fed-MedLoRA+)"][-2:]
    assert "dirichlet" in rows["skewed: fedlora weighted"] and "dirichlet" not in rows["fedlora exact"]


@pytest.mark.parametrize("change, message", [
    ({"preset": "huge"}, "--preset 'huge' is unknown"),
    ({"parts": "finetune,speed"}, "--parts 'finetune,speed'"),
    ({"init_from": Path("/nonexistent")}, "--init_from '/nonexistent' has no config.json"),
])
def test_bad_options_are_one_line(tmp_path, change, message):
    with pytest.raises(BenchError, match=message):
        lora.check(args(tmp_path, **change))


def test_a_non_empty_out_needs_resume(tmp_path):
    namespace = args(tmp_path)
    namespace.out.mkdir()
    (namespace.out / "results.json").write_text("{}")
    with pytest.raises(BenchError, match="--resume"):
        lora.check(namespace)
    namespace.resume = True
    assert lora.check(namespace)[1] == ["finetune", "pretrain"]


def test_the_table_reads_the_records():
    results = {"preset": "small", "command": "python -m fedbiobert.experiments lora",
               "finetune": [{"name": "fedavg (full model)", "status": "ok", "f1": 0.5, "bytes_up_per_round": 4e8,
                             "bytes_down_per_round": 4e8, "communication_vs_full_model": 1.0, "train_seconds": 10},
                            {"name": "fedlora exact", "status": "failed", "error": "exit status 2"}],
               "pretrain": [{"name": "fedbiobert-3-3-lora", "status": "ok", "lora": {"rank": 8, "targets": ["query"]},
                             "val_loss": 7.5, "val_loss_se": 0.04, "tokens": 81920, "train_seconds": 100,
                             "exchange_upload_bytes_per_silo": 2e6}]}
    table = markdown(results)
    assert "| fedavg (full model) | 50.00 | 400.00 | 400.00 | 100.00% | 10 |" in table
    assert "| fedlora exact | failed: exit status 2 |" in table
    assert "LoRA r8 query + heads | 7.5000 ± 0.0400 | 81920 | 2.00 |" in table

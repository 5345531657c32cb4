"""The parity experiment's plan (equal tokens, one general model, the same schedule), its comparisons on
hand-computed numbers, its bad inputs, and (slow) a whole tiny experiment end to end."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import BertConfig, BertModel

from fedbiobert.data.tokenizer import load_tokenizer
from fedbiobert.experiments.__main__ import main
from fedbiobert.experiments.parity_plan import (PRESETS, control_jobs, export_jobs, pretraining_specs,
                                                with_overrides)
from fedbiobert.experiments.parity_report import add_comparisons
from tests.conftest import REPO, SCIVOCAB, SHARED_DATA


def general_folder(tmp: Path, layers: int = 2) -> Path:
    """A tiny encoder-only general model with the shared SciBERT vocabulary."""
    tokenizer = load_tokenizer(SCIVOCAB)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=layers, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)
    torch.manual_seed(0)
    BertModel(config).save_pretrained(tmp / "general")
    tokenizer.save_pretrained(tmp / "general")
    return tmp / "general"


def test_every_run_trains_the_same_tokens_from_the_same_model(tmp_path):
    folder = general_folder(tmp_path, layers=4)
    preset = with_overrides(PRESETS["small"], head_warmup_fraction=0.25)
    specs = {spec.name: spec for spec in pretraining_specs(preset, folder, None, None)}
    assert sorted(specs) == sorted(["centralized", "fedavg", "fedbert-0-4", "fedbert-2-2", "fedbiobert-2-2",
                                    "fedbiobert-2-2-serverhead"])
    assert len({spec.tokens_per_round for spec in specs.values()}) == 1
    for spec in specs.values():
        flags = spec.flags()
        assert flags[flags.index("--init_from") + 1] == str(folder)
        assert flags[flags.index("--lr") + 1] == "0.0001"
        # the heads train alone on the same share of every run: 25% of 2 rounds x 20 steps, x2 centralized
        assert flags[flags.index("--head_warmup_steps") + 1] == ("20" if spec.name == "centralized" else "10")
    assert specs["fedbert-0-4"].is_baseline and specs["fedbert-0-4"].head_placement == "client"
    assert specs["fedbiobert-2-2-serverhead"].head_placement == "server"


def test_controls_and_exports_are_fine_tuned_and_probed_on_every_task(tmp_path):
    folder = general_folder(tmp_path)
    preset = with_overrides(PRESETS["small"], seeds="1,2")
    exports = export_jobs("fedbiobert-1-1", tmp_path / "run", [1, 2], preset.tasks)
    jobs = control_jobs(preset, folder, preset.tasks) + exports
    # the small preset fine-tunes fully on NCBI-disease and probes every task: 4 jobs per model
    assert len(jobs) == 2 * 4 + 2 * 4  # (general, random) + the exports of 2 rounds
    assert sorted((job.task.name, job.mode) for job in jobs if job.model_name == "general-model") == [
        ("bc5cdr", "probe"), ("medical_abstracts", "probe"), ("ncbi_disease", "finetune"), ("ncbi_disease", "probe")]
    random = [job for job in jobs if job.model == "none"]
    assert random and all("--tokenizer" in job.extra for job in random)
    names = {job.model_name for job in jobs}
    assert names == {"general-model", "random-init", "fedbiobert-1-1", "fedbiobert-1-1@round1"}


def test_comparisons_on_hand_computed_scores():
    def entry(model, mean, std):
        return {"model": model, "task": "ncbi", "mode": "finetune", "mean": mean, "std": std}
    entries = [entry("fedbert-0-6", 0.70, 0.006), entry("fedbiobert-3-3", 0.692, 0.008),
               entry("general-model", 0.72, 0.0), entry("fedavg", 0.66, 0.003)]
    add_comparisons(entries, "fedbert-0-6")
    bio, fedavg = entries[1], entries[3]
    assert bio["delta_vs_fedbert"] == pytest.approx(-0.008)
    assert bio["spread_vs_fedbert"] == pytest.approx(0.01)  # sqrt(0.006^2 + 0.008^2)
    assert bio["beyond_spread_vs_fedbert"] is False and bio["within_target_vs_fedbert"] is True
    assert fedavg["delta_vs_fedbert"] == pytest.approx(-0.04)
    assert fedavg["spread_vs_fedbert"] == pytest.approx(math.hypot(0.003, 0.006))
    assert fedavg["beyond_spread_vs_fedbert"] is True and fedavg["within_target_vs_fedbert"] is False
    assert bio["delta_vs_general"] == pytest.approx(-0.028) and bio["beyond_spread_vs_general"] is True
    assert "delta_vs_fedbert" not in entries[0]  # not compared with itself


@pytest.mark.parametrize("argv, fragment", [
    (["--preset", "huge"], "--preset 'huge' is unknown (accepted: small, full)"),
    (["--init_from", "/no/such/model"], "--init_from '/no/such/model' is not an HF model folder"),
    (["--tasks", "mimic"], "--tasks 'mimic' (accepted: comma-separated names from ncbi_disease, bc5cdr"),
    (["--modes", "train"], "--modes 'train' (accepted: finetune, probe or finetune,probe)"),
    (["--every", "0"], "--every 0 (accepted: an integer >= 1)"),
    (["--cut", "6"], "--cut 6 is outside [1, 1]"),
])
def test_bad_options_are_one_line_and_write_nothing(argv, fragment, tmp_path, capsys):
    folder = general_folder(tmp_path)
    out = tmp_path / "out"
    capsys.readouterr()  # saving the folder shows a progress bar
    with pytest.raises(SystemExit) as exit_info:
        main(["parity", "--out", str(out), "--init_from", str(folder), "--data_root", str(SHARED_DATA), *argv])
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0]
    assert not out.exists()


def test_an_existing_experiment_needs_resume(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.json").write_text("{}")
    with pytest.raises(SystemExit):
        main(["parity", "--out", str(out), "--init_from", str(general_folder(tmp_path)), "--data_root",
              str(SHARED_DATA)])
    assert "already holds an experiment (pass --resume" in capsys.readouterr().err


@pytest.mark.slow
def test_a_tiny_parity_experiment_end_to_end(tmp_path):
    """Every pre-training run, every control and export fine-tuned and probed on NCBI-disease, then the three
    outputs; a second invocation with --resume redoes nothing."""
    folder = general_folder(tmp_path)
    out = tmp_path / "parity"
    command = [sys.executable, "-m", "fedbiobert.experiments", "parity", "--out", str(out), "--init_from",
               str(folder), "--data_root", str(SHARED_DATA), "--tasks", "ncbi_disease", "--seeds", "1,2",
               "--threads", "1", "--preset", "tiny"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=1500)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert [row["status"] for row in results["pretraining"]] == ["ok"] * 6
    assert results["fedbert"] == "fedbert-0-2"
    speedups = {row["name"]: row["speedup_vs_fedbert"] for row in results["pretraining"]}
    assert speedups["fedbert-0-2"] == pytest.approx(1.0) and speedups["fedbiobert-1-1"] > 0
    models = {entry["model"] for entry in results["downstream"]}
    assert {"general-model", "random-init", "fedbiobert-1-1", "fedbert-0-2", "centralized"} <= models
    assert len(results["downstream"]) == 8 * 2  # 8 models x (finetune, probe) on one task
    assert (out / "results.md").read_text().count("| fedbiobert-1-1 |") == 4  # pre-training, loss by file, 2 modes
    assert (out / "parity.png").stat().st_size > 10_000
    again = subprocess.run([*command, "--resume"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and again.stdout.count("done before, skipped") == 6 + 16

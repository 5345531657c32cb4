"""The seed papers' experiments end to end on a tiny general model (slow): each command's three files, the
paper's comparisons filled in, and --resume redoing nothing. Real processes: the bench's runner and the
fine-tuner, as a user runs them."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO, SHARED_DATA
from tests.processes.test_experiments_parity import general_folder


def experiment(name: str, out, folder, *argv: str, timeout: int = 1200) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "fedbiobert.experiments", name, "--preset", "tiny", "--out", str(out),
               "--init_from", str(folder), "--data_root", str(SHARED_DATA), "--threads", "1", *argv]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.mark.slow
def test_a_tiny_liu_miller_experiment(tmp_path):
    folder, out = general_folder(tmp_path), tmp_path / "lm"
    experiment("liu_miller", out, folder, "--conditions", "general-model,fedbiobert")
    results = json.loads((out / "results.json").read_text())
    assert {(e["condition"], e["task"], e["mode"]) for e in results["finetuning"]} == {
        (c, t, m) for c in ("general-model", "fedbiobert") for t in ("ncbi_disease", "bc5cdr")
        for m in ("centralized", "federated")}
    assert all(0 <= e["f1"] <= 1 and "precision" in e and "recall" in e for e in results["finetuning"])
    assert "pretrained_above_general" in results["pattern"][0]
    assert "## The paper's pattern" in (out / "results.md").read_text()
    assert (out / "liu_miller.png").stat().st_size > 5_000
    again = experiment("liu_miller", out, folder, "--conditions", "general-model,fedbiobert", "--resume")
    assert again.stdout.count("done before, skipped") == 1 + 8


@pytest.mark.slow
def test_a_tiny_hilmkil_experiment(tmp_path):
    folder, out = general_folder(tmp_path), tmp_path / "hk"
    experiment("hilmkil", out, folder)
    results = json.loads((out / "results.json").read_text())
    assert [(run["split"], run["silos"]) for run in results["runs"]] == [
        ("both", 1), ("iid", 2), ("iid", 4), ("dirichlet", 2), ("dirichlet", 4)]
    assert all(len(run["dev_accuracy_by_round"]) == 2 for run in results["runs"])  # the tiny preset's 2 rounds
    one = results["runs"][0]
    assert results["target_dev_accuracy"] == pytest.approx(0.9 * one["dev_accuracy_by_round"][-1])
    assert one["rounds_to_target"] is not None  # its own last round reaches 90% of itself
    assert (out / "hilmkil.png").stat().st_size > 5_000
    assert experiment("hilmkil", out, folder, "--resume").stdout.count("done before, skipped") == 5


@pytest.mark.slow
def test_a_tiny_attention_experiment(tmp_path):
    folder, out = general_folder(tmp_path), tmp_path / "att"
    experiment("attention", out, folder)
    results = json.loads((out / "results.json").read_text())
    assert list(results["models"]) == ["general-model", "fedbiobert-1-1", "centralized"]
    grid = results["models"]["general-model"]["entropy"]
    assert len(grid) == 2 and len(grid[0]) == 2  # layers x heads of the tiny model
    assert len(results["pairs"]) == 3
    assert all(-1 <= pair["spearman_entropy"] <= 1 and pair["js_matrix_mad"] >= 0 for pair in results["pairs"])
    assert (out / "attention.png").stat().st_size > 5_000
    again = experiment("attention", out, folder, "--resume")
    assert again.stdout.count("done before, skipped") == 2

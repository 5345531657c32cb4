"""End to end: the CLI on a slice of the real NCBI-disease data with a small random model, centralized
(a real `python -m` process) and federated (in process), and fedbiobert.finetune.exports on a fake run folder."""
from __future__ import annotations

import json
import subprocess

import pytest

from fedbiobert.finetune.exports import main as evaluate_main, select_exports
from fedbiobert.finetune.cli import main
from fedbiobert.finetune.errors import InputError
from fedbiobert.model.build import ModelSpec, build_full_model
from tests.conftest import REPO, SCIVOCAB, SHARED_DATA
from tests.support.finetune_helpers import tiny_model_args

NCBI = SHARED_DATA / "ner" / "ncbi_disease"
ABSTRACTS = SHARED_DATA / "classification" / "medical_abstracts"
SLICE = ["--max_train_sentences", "48", "--max_test_sentences", "24", "--batch_size", "16", "--max_len", "64"]
pytestmark = pytest.mark.skipif(not NCBI.is_dir(), reason="needs ../shared/data")


def test_cli_ner_centralized_on_real_ncbi(tmp_path, python):
    output = tmp_path / "ncbi.json"
    command = [python, "-m", "fedbiobert.finetune", "--data", str(NCBI), *tiny_model_args(SCIVOCAB), *SLICE,
               "--epochs", "1", "--seeds", "1,2", "--output", str(output)]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    record = json.loads(output.read_text())
    for key in ("task", "data", "mode", "model", "n_clients", "epochs", "seed", "precision", "recall", "f1",
                "conlleval_precision", "conlleval_recall", "conlleval_f1", "lenient_f1", "train_seconds", "probe"):
        assert key in record, key
    assert record["task"] == "ner" and record["seeds"] == [1, 2] and len(record["runs"]) == 2
    assert record["probe"] is False and "conlleval_f1" in record["std"] and "| conlleval_f1 |" in done.stdout
    assert record["runs"][0]["test_examples"] == 24 and "Disease" in record["runs"][0]["per_type"]
    assert record["std"]["f1"] >= 0 and "| mean ± std |" in done.stdout


@pytest.mark.slow
def test_cli_classification_federated_dirichlet(tmp_path, capsys):
    output = tmp_path / "abstracts.json"
    main(["--data", str(ABSTRACTS), *tiny_model_args(SCIVOCAB), *SLICE, "--mode", "federated",
          "--n_clients", "3", "--split", "dirichlet", "--participation_ratio", "0.67", "--rounds", "2",
          "--output", str(output)])
    record = json.loads(output.read_text())
    assert record["task"] == "classification" and record["mode"] == "federated" and record["n_clients"] == 3
    assert 0 <= record["accuracy"] <= 1 and 0 <= record["macro_f1"] <= 1
    assert "neoplasms" in record["runs"][0]["per_class"]
    assert "accuracy" in capsys.readouterr().out


@pytest.mark.slow
def test_evaluate_every_round_export(tmp_path, capsys):
    run_dir = tmp_path / "run"
    spec = ModelSpec(arch="bert", vocab_size=31090, hidden_size=16, num_attention_heads=2, intermediate_size=32,
                     num_layers=1, max_len=64, pad_token_id=0)
    from fedbiobert.data.tokenizer import load_tokenizer
    tokenizer = load_tokenizer(SCIVOCAB)
    for number in (1, 2):
        build_full_model(spec, seed=number).save_pretrained(run_dir / f"round{number}")
        tokenizer.save_pretrained(run_dir / f"round{number}")
    events = [{"event": "round", "round": number, "round_seconds": 10.0 * number} for number in (1, 2)]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(event) + "\n" for event in events))
    evaluate_main([str(run_dir), "--data", str(NCBI), *SLICE, "--epochs", "1", "--lr", "1e-3", "--baseline"])
    result = json.loads((run_dir / "downstream" / "evaluate.json").read_text())
    assert [row["round"] for row in result["rows"]] == [0, 1, 2]
    assert [row["pretrain_seconds"] for row in result["rows"]] == [0.0, 10.0, 30.0]
    assert (run_dir / "downstream" / "evaluate.png").stat().st_size > 1000
    assert "pre-training s" in (run_dir / "downstream" / "evaluate.md").read_text()


def test_evaluate_every_k_keeps_multiples_and_the_last_and_refuses_zero(tmp_path):
    exports = [(number, tmp_path / f"round{number}") for number in range(1, 11)]
    assert [number for number, _ in select_exports(exports, every=4, last_only=False)] == [4, 8, 10]
    assert [number for number, _ in select_exports(exports, every=1, last_only=False)] == list(range(1, 11))
    assert [number for number, _ in select_exports(exports, every=4, last_only=True)] == [10]
    with pytest.raises(InputError, match="--every 0 is invalid"):
        select_exports(exports, every=0, last_only=False)

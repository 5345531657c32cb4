"""The real command line, end to end, on real processes and real (sliced) biomedical text."""
import json

import pytest
import torch
from transformers import AutoModelForMaskedLM, AutoTokenizer

from fedbiobert.metrics import EVENT_KEYS, read_events
from tests.support.launch import TINY_MODEL, torchrun


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


def _rounds(output_dir):
    return [event for event in read_events(output_dir) if event["event"] == "round"]


def _check_export(model_dir):
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    model = AutoModelForMaskedLM.from_pretrained(model_dir, local_files_only=True).eval()
    encoded = tokenizer(f"the patient was given {tokenizer.mask_token} for pain .", return_tensors="pt")
    with torch.no_grad():
        logits = model(**encoded).logits
    assert logits.shape == (1, encoded["input_ids"].shape[1], len(tokenizer))
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("extra", [
    ["--arch", "bert", "--n_clients", "4", "--participation_ratio", "0.5"],
    ["--arch", "roberta", "--head_placement", "server", "--n_clients", "4", "--participation_ratio", "0.5"],
    pytest.param(["--arch", "bert", "--n_clients", "8", "--participation_ratio", "1.0", "--partition_data", "label"],
                 marks=pytest.mark.slow),
], ids=["bert-client-head", "roberta-server-head", "bert-8-clients-label-split"])
def test_three_process_run(tmp_path, small_corpus, cache_dir, extra):
    output = tmp_path / "out"
    result = torchrun(3, [*TINY_MODEL, "--num_client_encoder", "2", "--num_server_encoder", "2",
                          "--n_comm_rounds", "3", "--num_batch", "8", "--lr", "2e-3", "--data_dir", str(small_corpus),
                          "--output_dir", str(output), *extra], cache_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    rounds = _rounds(output)
    assert [r["round"] for r in rounds] == [1, 2, 3]
    assert rounds[2]["global_loss"] < rounds[0]["global_loss"]
    assert rounds[2]["local_loss"] < rounds[0]["local_loss"]
    steps = [e for e in read_events(output) if e["event"] == "step"]
    assert all(set(EVENT_KEYS) <= set(e) for e in steps)
    client_steps = [e for e in steps if e["role"] == "client"]
    sampled = 2 if "0.5" in extra else 8
    assert len(client_steps) >= 3 * sampled * 8
    summary = json.loads((output / "summary.json").read_text())
    assert summary["rounds_completed"] == 3 and summary["bytes_up"] > 0 and summary["val_perplexity"] > 1
    assert (output / "checkpoint" / "state.pt").is_file() and list((output / "tb").iterdir())
    assert json.loads((output / "config.json").read_text())["arch"] == extra[1]
    _check_export(output / "round3")


def test_bad_option_fails_before_any_work_and_writes_nothing(tmp_path, small_corpus, cache_dir):
    output = tmp_path / "out"
    result = torchrun(3, [*TINY_MODEL, "--participation_ratio", "1.5", "--data_dir", str(small_corpus),
                          "--output_dir", str(output)], cache_dir, timeout=120)
    assert result.returncode != 0
    assert "--participation_ratio 1.5 is outside (0, 1]" in result.stderr
    assert not output.exists()


def test_private_embeddings_and_init_from_a_previous_export(tmp_path, small_corpus, cache_dir):
    """--fedavg_embedding_head False keeps embeddings/heads per silo (in the checkpoint); a new run
    can then start from the exported model and its tokenizer (--init_from, --tokenizer)."""
    first = tmp_path / "first"
    args = [*TINY_MODEL, "--num_client_encoder", "1", "--num_server_encoder", "1", "--n_clients", "3",
            "--n_comm_rounds", "2", "--num_batch", "3", "--data_dir", str(small_corpus)]
    result = torchrun(3, [*args, "--fedavg_embedding_head", "False", "--output_dir", str(first)], cache_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    state = torch.load(first / "checkpoint" / "state.pt", weights_only=False)
    assert sorted(state["private_states"]) == [0, 1, 2]
    embedding = "bert.embeddings.word_embeddings.weight"
    assert all(not key.startswith("bert.encoder.") for key in state["private_states"][0])  # layers are averaged
    silos = [state["private_states"][cid][embedding] for cid in range(3)]
    assert not torch.equal(silos[0], silos[1])  # each silo trained its own embeddings

    second = tmp_path / "second"
    result = torchrun(3, [*args, "--init_from", str(first / "round2"), "--tokenizer", str(first / "round2"),
                          "--output_dir", str(second)], cache_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    rounds = _rounds(second)
    assert rounds[0]["val_loss"] < _rounds(first)[0]["val_loss"]  # it did start from trained weights
    _check_export(second / "round2")

"""--lora_rank in the pre-training engine, on real processes: fedbiobert, fedbert and fedavg train adapters on
a frozen --init_from base (bit-identical in the checkpoint), exchange only what trains, and export a stock
masked LM with the adapters merged; bad values are one line before any work."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForMaskedLM, BertConfig, BertModel

from fedbiobert.config import ConfigError, parse_config, validate_paths, validate_static
from fedbiobert.data.tokenizer import load_tokenizer
from fedbiobert.metrics import read_events
from tests.conftest import SCIVOCAB
from tests.support.launch import torchrun


@pytest.fixture(scope="module")
def base_model(tmp_path_factory) -> Path:
    """A tiny encoder-only folder (as sentence-transformers exports are) with the shared SciBERT vocabulary."""
    folder = tmp_path_factory.mktemp("base")
    tokenizer = load_tokenizer(SCIVOCAB)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=128)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def run_args(base_model: Path, corpus: Path, run: str) -> list[str]:
    """`run`: ALGORITHM-CLIENT_LAYERS-SERVER_LAYERS."""
    algorithm, client_layers, server_layers = run.split("-")
    cut = ["--num_client_encoder", client_layers, "--num_server_encoder", server_layers]
    return ["--algorithm", algorithm, "--init_from", str(base_model), "--lora_rank", "4", *cut, "--n_clients", "2",
            "--n_comm_rounds", "2", "--num_batch", "2", "--batch_size", "4", "--max_len", "64", "--val_blocks", "8",
            "--lr", "1e-3", "--data_dir", str(corpus)]


# fedbert-0-2: nothing trainable below the cut (frozen embeddings): the client trains its head alone
@pytest.mark.parametrize("run", ["fedbiobert-1-1", "fedbert-0-2", pytest.param("fedbert-1-1", marks=pytest.mark.slow),
                                 pytest.param("fedavg-2-0", marks=pytest.mark.slow)])
def test_a_lora_run_trains_adapters_on_a_frozen_base(base_model, small_corpus, tmp_path, run):
    output = tmp_path / "out"
    result = torchrun(2, [*run_args(base_model, small_corpus, run), "--output_dir", str(output)],
                      tmp_path / "cache", timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    start = load_file(str(base_model / "model.safetensors"))
    state = torch.load(output / "checkpoint" / "state.pt", weights_only=False)
    trained = {**state["client_state"], **state["server_states"].get(0, {})}
    checked = 0
    for name, value in start.items():
        if "pooler" in name:
            continue
        key = "bert." + name
        key = key.replace(".weight", ".base_layer.weight").replace(".bias", ".base_layer.bias") \
            if key.rsplit(".", 1)[0] + ".base_layer.weight" in trained else key
        assert torch.equal(value, trained[key]), f"{name} moved"
        checked += 1
    assert checked > 20
    assert any(torch.count_nonzero(value) for key, value in trained.items() if ".lora_B." in key)
    exported = AutoModelForMaskedLM.from_pretrained(output / "round2", local_files_only=True)
    query = "bert.encoder.layer.0.attention.self.query"
    merged = trained[query + ".base_layer.weight"] + 4.0 * (trained[query + ".lora_B.default.weight"]
                                                            @ trained[query + ".lora_A.default.weight"])
    torch.testing.assert_close(exported.state_dict()[query + ".weight"], merged)
    uploads = [e["nbytes"] for e in read_events(output) if e["event"] == "exchange" and e["direction"] == "upload"]
    full_bytes = 4 * sum(value.numel() for value in start.values())
    assert uploads and max(uploads) < 0.1 * full_bytes  # adapters and heads, never the frozen base
    summary = json.loads((output / "summary.json").read_text())
    assert summary["lora"]["rank"] == 4


def test_bad_lora_values_are_one_line(base_model, small_corpus):
    base = ["--data_dir", str(small_corpus), "--num_client_encoder", "1", "--num_server_encoder", "1"]
    with pytest.raises(ConfigError, match="--lora_rank 4 needs --init_from"):
        validate_static(parse_config([*base, "--lora_rank", "4"]))
    with pytest.raises(ConfigError, match="--lora_rank -1"):
        validate_static(parse_config([*base, "--lora_rank", "-1"]))
    with_model = [*base, "--init_from", str(base_model)]
    with pytest.raises(ConfigError, match="--lora_rank 64 exceeds the width 32"):
        validate_paths(parse_config([*with_model, "--lora_rank", "64"]))
    with pytest.raises(ConfigError, match="no linear module 'qkv'"):
        validate_paths(parse_config([*with_model, "--lora_rank", "4", "--lora_targets", "qkv"]))


@pytest.mark.slow
def test_a_lora_run_resumes_bit_for_bit(base_model, small_corpus, tmp_path):
    """Two rounds straight, and one round, a stop, then --from_checkpoint: the same export."""
    args = run_args(base_model, small_corpus, "fedbiobert-1-1")
    straight = torchrun(2, [*args, "--output_dir", str(tmp_path / "straight")], tmp_path / "cache", timeout=240)
    assert straight.returncode == 0, straight.stderr[-3000:]
    first = [*args, "--output_dir", str(tmp_path / "resumed"), "--stop_after_round", "1"]
    assert torchrun(2, first, tmp_path / "cache", timeout=240).returncode == 0
    resumed = torchrun(2, [*args, "--output_dir", str(tmp_path / "resumed"), "--from_checkpoint", "True"],
                       tmp_path / "cache", timeout=240)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    expected = load_file(str(tmp_path / "straight" / "round2" / "model.safetensors"))
    got = load_file(str(tmp_path / "resumed" / "round2" / "model.safetensors"))
    assert expected.keys() == got.keys()
    for key in expected:
        assert torch.equal(expected[key], got[key]), key

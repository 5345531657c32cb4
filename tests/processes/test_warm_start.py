"""Warm start (--init_from): the checkpoint's tokenizer and shape, MLM heads drawn from the run's seed on every
process, encoder-only folders, and a real continual pre-training run from the packaged general model."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForMaskedLM, BertConfig, BertModel

from fedbiobert.config import ConfigError, parse_config, validate_paths
from fedbiobert.config.warm_start import adopt_init_from
from fedbiobert.data.tokenizer import load_tokenizer
from fedbiobert.model import load_full_model
from tests.conftest import REPO, SCIVOCAB
from tests.support.launch import torchrun

GENERAL_MODEL = REPO / "models" / "minilm-l6"
HEAD_KEYS = ("cls.predictions.transform.dense.weight", "cls.predictions.transform.LayerNorm.weight",
             "cls.predictions.transform.dense.bias")


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def encoder_only(tmp_path_factory) -> Path:
    """A tiny `BertModel` folder (no MLM head, a pooler), as a sentence-transformers export is, with the
    shared SciBERT vocabulary as its tokenizer."""
    folder = tmp_path_factory.mktemp("encoder_only")
    tokenizer = load_tokenizer(SCIVOCAB)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)
    torch.manual_seed(0)
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_missing_heads_come_from_the_seed_not_the_global_generator(encoder_only):
    """Before, HF drew them from each process's global generator: the draws differed with its state."""
    torch.manual_seed(1)
    first = load_full_model(str(encoder_only), seed=7).state_dict()
    torch.rand(1000)  # another process, or the same one later: the global stream is elsewhere
    second = load_full_model(str(encoder_only), seed=7).state_dict()
    other = load_full_model(str(encoder_only), seed=8).state_dict()
    for key in HEAD_KEYS:
        assert torch.equal(first[key], second[key]), key
    assert not torch.equal(first[HEAD_KEYS[0]], other[HEAD_KEYS[0]])
    assert first[HEAD_KEYS[0]].std().item() == pytest.approx(0.02, rel=0.1)  # BERT's initializer_range
    saved = load_file(str(encoder_only / "model.safetensors"))
    assert torch.equal(first["bert.encoder.layer.1.output.dense.weight"], saved["encoder.layer.1.output.dense.weight"])
    assert not any("pooler" in key for key in first)  # dropped with a note
    # the decoder starts as the word embeddings, as an own tensor (untied)
    assert torch.equal(first["cls.predictions.decoder.weight"], saved["embeddings.word_embeddings.weight"])


def test_the_tokenizer_and_shape_come_from_the_folder(encoder_only, small_corpus):
    config = parse_config(["--data_dir", str(small_corpus), "--init_from", str(encoder_only),
                           "--num_client_encoder", "1", "--num_server_encoder", "1"])
    validate_paths(config)
    adopted = adopt_init_from(config)
    assert adopted.tokenizer == str(encoder_only)  # not a vocabulary trained on the corpus
    assert (adopted.hidden_size, adopted.num_attention_heads, adopted.intermediate_size) == (32, 2, 64)
    assert adopted.vocab_size == len(load_tokenizer(SCIVOCAB))


def test_the_same_vocabulary_elsewhere_is_accepted_and_another_refused(encoder_only, small_corpus, tmp_path):
    base = ["--data_dir", str(small_corpus), "--init_from", str(encoder_only), "--num_client_encoder", "1",
            "--num_server_encoder", "1"]
    validate_paths(parse_config([*base, "--tokenizer", str(SCIVOCAB)]))  # the same tokens and ids: fine
    swapped = SCIVOCAB.read_text(encoding="utf-8").split("\n")
    swapped[200], swapped[201] = swapped[201], swapped[200]  # same size, two ids exchanged
    other = tmp_path / "vocab.txt"
    other.write_text("\n".join(swapped), encoding="utf-8")
    with pytest.raises(ConfigError, match="has another vocabulary than --init_from"):
        validate_paths(parse_config([*base, "--tokenizer", str(other)]))


def test_a_warm_start_run_is_reproducible(encoder_only, small_corpus, cache_dir, tmp_path):
    """Two runs with one --manual_seed from an encoder-only folder export the same weights."""
    args = ["--init_from", str(encoder_only), "--num_client_encoder", "1", "--num_server_encoder", "1",
            "--n_clients", "2", "--n_comm_rounds", "1", "--num_batch", "2", "--batch_size", "4", "--max_len", "64",
            "--val_blocks", "8", "--head_warmup_steps", "1", "--data_dir", str(small_corpus)]
    exports = []
    for name in ("a", "b"):
        result = torchrun(2, [*args, "--output_dir", str(tmp_path / name)], cache_dir, timeout=240)
        assert result.returncode == 0, result.stderr[-3000:]
        exports.append(load_file(str(tmp_path / name / "round1" / "model.safetensors")))
    assert exports[0].keys() == exports[1].keys()
    for key in exports[0]:
        assert torch.equal(exports[0][key], exports[1][key]), key
    assert "initialised from seed 42" in result.stderr


@pytest.mark.skipif(not (GENERAL_MODEL / "config.json").is_file(),
                    reason="the general model is missing: run bash scripts/get_base_model.sh")
def test_continual_pretraining_from_the_packaged_general_model(small_corpus, cache_dir, tmp_path):
    """all-MiniLM-L6-v2 (encoder-only, its own WordPiece vocabulary): fedbiobert 3-3 trains from it and exports
    a masked LM with its tokenizer; the first layer moved little from where it started."""
    output = tmp_path / "out"
    result = torchrun(2, ["--init_from", str(GENERAL_MODEL), "--num_client_encoder", "3", "--num_server_encoder",
                          "3", "--n_clients", "2", "--n_comm_rounds", "1", "--num_batch", "2", "--batch_size", "4",
                          "--max_len", "64", "--val_blocks", "8", "--lr", "1e-4", "--data_dir", str(small_corpus),
                          "--output_dir", str(output)], cache_dir, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    export = output / "round1"
    assert load_tokenizer(export).get_vocab() == load_tokenizer(GENERAL_MODEL).get_vocab()
    model = AutoModelForMaskedLM.from_pretrained(export, local_files_only=True)
    start = load_file(str(GENERAL_MODEL / "model.safetensors"))
    trained = model.bert.encoder.layer[0].attention.self.query.weight.detach()
    original = start["encoder.layer.0.attention.self.query.weight"]
    assert 0 < (trained - original).norm() / original.norm() < 0.05

"""Tests of fedbiobert.model.build: spec validation, configs, seeded init, untied loading."""

import dataclasses

import pytest
import torch
from torch.testing import assert_close
from transformers import BertConfig, BertForMaskedLM

from fedbiobert.model import (
    ModelSpec,
    arch_of,
    build_config,
    build_full_model,
    load_full_model,
    num_layers_of,
)

SMALL_SPEC = ModelSpec(arch="bert", vocab_size=100, hidden_size=32, num_attention_heads=2,
                       intermediate_size=64, num_layers=4, max_len=16, pad_token_id=0)
ROBERTA_SPEC = dataclasses.replace(SMALL_SPEC, arch="roberta", pad_token_id=1)


@pytest.mark.parametrize("change,message", [
    ({"hidden_size": 130, "num_attention_heads": 4},
     "hidden_size 130 is not divisible by num_attention_heads 4"),
    ({"arch": "gpt2"}, "arch 'gpt2'"),
    ({"num_layers": 0}, "num_layers 0"),
    ({"pad_token_id": 100}, "pad_token_id 100"),
])
def test_spec_validate_names_the_bad_value(change, message):
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(SMALL_SPEC, **change).validate()


def test_build_config_rejects_unknown_attention():
    with pytest.raises(ValueError, match="attn_implementation 'flash'"):
        build_config(SMALL_SPEC, "flash")


def test_bert_config_fields():
    config = build_config(SMALL_SPEC)
    assert (config.model_type, config.max_position_embeddings) == ("bert", 16)
    assert config.tie_word_embeddings is False
    assert (config.num_hidden_layers, config.vocab_size, config.pad_token_id) == (4, 100, 0)


def test_roberta_config_fields_and_full_length_input_fits():
    config = build_config(ROBERTA_SPEC)
    assert (config.max_position_embeddings, config.type_vocab_size) == (18, 1)
    assert config.tie_word_embeddings is False
    model = build_full_model(config, seed=0).eval()
    full_length = torch.randint(3, 100, (2, ROBERTA_SPEC.max_len))
    with torch.no_grad():  # positions run up to pad_token_id + max_len: must stay inside the table
        assert model(input_ids=full_length).logits.shape == (2, 16, 100)


def test_roberta_position_table_grows_with_a_large_pad_id():
    config = build_config(dataclasses.replace(ROBERTA_SPEC, pad_token_id=5))
    assert config.max_position_embeddings == ROBERTA_SPEC.max_len + 5 + 1


@pytest.mark.parametrize("spec", [SMALL_SPEC, ROBERTA_SPEC], ids=["bert", "roberta"])
def test_same_seed_same_weights_and_untied_decoder_starts_as_embeddings(spec):
    first, second = build_full_model(spec, seed=11), build_full_model(build_config(spec), seed=11)
    assert_close(first.state_dict(), second.state_dict())
    other = build_full_model(spec, seed=12)
    assert not torch.equal(first.get_input_embeddings().weight, other.get_input_embeddings().weight)
    decoder_weight = first.get_output_embeddings().weight
    embedding_weight = first.get_input_embeddings().weight
    assert decoder_weight is not embedding_weight
    assert_close(decoder_weight, embedding_weight)
    assert arch_of(first) == spec.arch and num_layers_of(first.config) == 4


def test_build_full_model_unties_a_tying_config():
    tying_config = build_config(SMALL_SPEC)
    tying_config.tie_word_embeddings = True
    model = build_full_model(tying_config, seed=0)
    assert model.get_output_embeddings().weight is not model.get_input_embeddings().weight
    assert tying_config.tie_word_embeddings is True  # the caller's config is not mutated


def test_load_full_model_unties_a_tied_checkpoint(tmp_path):
    tied_config = BertConfig(vocab_size=100, hidden_size=32, num_attention_heads=2, intermediate_size=64,
                             num_hidden_layers=2, max_position_embeddings=16, tie_word_embeddings=True)
    torch.manual_seed(0)
    tied = BertForMaskedLM(tied_config).eval()
    assert tied.get_output_embeddings().weight is tied.get_input_embeddings().weight
    tied.save_pretrained(tmp_path / "tied")
    loaded = load_full_model(str(tmp_path / "tied")).eval()
    decoder, embeddings = loaded.get_output_embeddings(), loaded.get_input_embeddings()
    assert decoder.weight is not embeddings.weight and loaded.config.tie_word_embeddings is False
    assert_close(decoder.weight, embeddings.weight)
    loaded.tie_weights(recompute_mapping=False)  # HF's cached tie list must not re-tie it
    assert loaded.get_output_embeddings().weight is not loaded.get_input_embeddings().weight
    input_ids = torch.randint(1, 100, (2, 8))
    with torch.no_grad():
        assert_close(loaded(input_ids=input_ids).logits, tied(input_ids=input_ids).logits)
    loaded.save_pretrained(tmp_path / "untied")  # the untied model must save and reload cleanly
    reloaded = load_full_model(str(tmp_path / "untied")).eval()
    with torch.no_grad():
        assert_close(reloaded(input_ids=input_ids).logits, tied(input_ids=input_ids).logits)


def test_load_full_model_rejects_a_folder_without_weights(tmp_path):
    with pytest.raises(ValueError, match="has no config.json"):
        load_full_model(str(tmp_path))
    with pytest.raises(ValueError, match="has no config.json"):
        load_full_model(str(tmp_path / "missing"))


def test_arch_of_rejects_other_model_types():
    with pytest.raises(ValueError, match="model_type 'gpt2'"):
        arch_of(type("Config", (), {"model_type": "gpt2"})())

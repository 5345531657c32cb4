"""LoRA adapters (fedbiobert/lora.py, config/lora.py): what trains, merging back to stock weights, folding an
averaged update into the base, and the one-line errors; on tiny random models."""
from __future__ import annotations

import pytest
import torch
from transformers import BertConfig, BertForMaskedLM, BertForTokenClassification

from fedbiobert.config.lora import LoraSettings, check_lora, layer_linears_of_config, parse_targets
from fedbiobert.lora import (add_lora, adapted_prefixes, adapter_product, fold_into_base, layer_linears_of_model,
                             merged_state)

CONFIG = dict(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
              max_position_embeddings=32)


def tiny(cls=BertForMaskedLM, seed: int = 0):
    torch.manual_seed(seed)
    return cls(BertConfig(**CONFIG)).eval()


def randomise_adapters(model, seed: int = 1) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".lora_B." in name:  # B starts at zero: give the adapters something to merge
                param.copy_(torch.randn(param.shape, generator=generator) * 0.1)


def test_only_adapters_and_the_chosen_extras_train():
    model = tiny()
    names = add_lora(model, LoraSettings(4, targets=("query", "value")), seed=0,
                     trainable=lambda name: name.startswith("cls.predictions.transform."))
    assert names and all(".lora_" in name or name.startswith("cls.predictions.transform.") for name in names)
    adapted = adapted_prefixes(model.state_dict())
    assert adapted == sorted(f"bert.encoder.layer.{i}.attention.self.{t}" for i in range(2) for t in ("query", "value"))
    assert not any("pooler" in prefix or "cls." in prefix for prefix in adapted)  # heads are never adapted
    frozen = [name for name, param in model.named_parameters() if not param.requires_grad]
    assert "bert.embeddings.word_embeddings.weight" in frozen
    assert "bert.encoder.layer.0.attention.self.query.base_layer.weight" in frozen


def test_the_adapters_start_as_the_identity_and_are_drawn_from_the_seed():
    reference = tiny()
    inputs = torch.randint(0, 50, (2, 7))
    expected = reference(inputs).logits
    first, second, other = tiny(), tiny(), tiny()
    torch.manual_seed(123)  # the global stream must not matter
    add_lora(first, LoraSettings(4), seed=5)
    add_lora(second, LoraSettings(4), seed=5)
    add_lora(other, LoraSettings(4), seed=6)
    torch.testing.assert_close(first(inputs).logits, expected)  # B = 0
    key = "bert.encoder.layer.0.attention.self.query.lora_A.default.weight"
    assert torch.equal(first.state_dict()[key], second.state_dict()[key])
    assert not torch.equal(first.state_dict()[key], other.state_dict()[key])


def test_merged_state_is_a_stock_model_with_the_same_function():
    model = tiny()
    settings = LoraSettings(4, alpha=8.0, dropout=0.0, targets=("query", "value", "output.dense"))
    add_lora(model, settings, seed=0)
    randomise_adapters(model)
    inputs = torch.randint(0, 50, (2, 9))
    adapted_logits = model(inputs).logits
    stock = tiny(seed=3)
    stock.load_state_dict(merged_state(model.state_dict(), settings.scaling))  # strict: exactly the stock keys
    torch.testing.assert_close(stock(inputs).logits, adapted_logits, rtol=1e-5, atol=1e-5)
    prefix = "bert.encoder.layer.1.attention.self.query"
    state = model.state_dict()
    expected = state[prefix + ".base_layer.weight"] + 2.0 * (state[prefix + ".lora_B.default.weight"]
                                                             @ state[prefix + ".lora_A.default.weight"])
    torch.testing.assert_close(stock.state_dict()[prefix + ".weight"], expected)


def test_fold_into_base_adds_the_update_and_restarts_the_adapters():
    model = tiny(BertForTokenClassification)
    settings = LoraSettings(2, alpha=4.0, dropout=0.0)
    add_lora(model, settings, seed=0)
    randomise_adapters(model)
    prefix = "bert.encoder.layer.0.attention.self.value"
    before = model.state_dict()[prefix + ".base_layer.weight"].clone()
    delta = torch.full_like(before, 0.5)
    fold_into_base(model, {prefix: delta}, settings.scaling, seed=9)
    state = model.state_dict()
    torch.testing.assert_close(state[prefix + ".base_layer.weight"], before + 2.0 * delta)
    assert torch.count_nonzero(state[prefix + ".lora_B.default.weight"]) == 0
    assert torch.count_nonzero(adapter_product(state, prefix)) == 0


@pytest.mark.parametrize("settings, message", [
    (LoraSettings(0), "--lora_rank 0 .accepted: an integer >= 1"),
    (LoraSettings(17), "--lora_rank 17 exceeds the width 16"),
    (LoraSettings(4, alpha=0.0), "--lora_alpha 0.0"),
    (LoraSettings(4, dropout=1.0), "--lora_dropout 1.0"),
    (LoraSettings(4, targets=("qkv",)), "no linear module 'qkv'"),
])
def test_bad_settings_are_one_line(settings, message):
    with pytest.raises(ValueError, match=message) as error:
        check_lora(settings, layer_linears_of_config(16, 32))
    assert "\n" not in str(error.value)


def test_the_shapes_from_the_config_are_the_models():
    model = tiny()
    assert layer_linears_of_model(model) == layer_linears_of_config(16, 32)
    check_lora(LoraSettings(16, targets=("dense",)), layer_linears_of_model(model))  # widths 16 and 32: 16 fits
    assert parse_targets(" query, value ,") == ("query", "value")
    with pytest.raises(ValueError, match="accepted: comma-separated"):
        parse_targets(" , ")

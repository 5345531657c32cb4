"""Federated fine-tuning's aggregation rules (finetune/aggregation.py) on hand-made cases: adaptive weights
are exp(1 - loss) normalised; exact aggregation is the weighted mean of the products B A; the bytes."""
from __future__ import annotations

import math

import pytest
import torch
from transformers import BertConfig, BertForTokenClassification

from fedbiobert.config.lora import LoraSettings
from fedbiobert.finetune.aggregation import (AdaptiveAggregation, Aggregation, ExactAggregation,
                                             normalised_adaptive_weights)
from fedbiobert.lora import add_lora
from fedbiobert.server_optimizer import ServerOptimizer, ServerOptimizerSettings

SETTINGS = LoraSettings(2, alpha=4.0, dropout=0.0)  # scaling 2
QUERY = "bert.encoder.layer.0.attention.self.query"


def adapted_model():
    torch.manual_seed(0)
    model = BertForTokenClassification(BertConfig(vocab_size=30, hidden_size=8, num_hidden_layers=1,
                                                  num_attention_heads=2, intermediate_size=16, num_labels=3))
    keys = add_lora(model, SETTINGS, seed=0, trainable=lambda name: name.startswith("classifier."))
    return model.eval(), keys


def silo_state(model, seed: int) -> dict:
    generator = torch.Generator().manual_seed(seed)
    state = {key: value.clone() for key, value in model.state_dict().items()}
    for key in state:
        if ".lora_" in key or key.startswith("classifier."):
            state[key] = torch.randn(state[key].shape, generator=generator)
    return state


def test_adaptive_weights_are_exp_one_minus_loss_normalised():
    # hand-computed: exp(0.5), exp(0), exp(-1) = 1.648721, 1, 0.367879; sum 3.016600
    assert normalised_adaptive_weights([0.5, 1.0, 2.0]) == pytest.approx([0.546549, 0.331499, 0.121952], abs=2e-6)
    assert normalised_adaptive_weights([float("nan"), 1.0]) == [0.0, 1.0]  # a model that does not score gets 0


def test_adaptive_aggregation_weights_each_silo_by_its_validation_loss():
    model, keys = adapted_model()
    losses = {0: 0.5, 1: 2.0}
    states = {silo: silo_state(model, 10 + silo) for silo in losses}
    scored = iter(losses.values())
    aggregation = AdaptiveAggregation(keys, ServerOptimizer(ServerOptimizerSettings()), lambda flat: flat,
                                      lambda _: next(scored), n_clients=2)
    global_state = {key: value.clone() for key, value in model.state_dict().items()}
    total = aggregation.new_sum(global_state)
    weights = {}
    for silo, state in states.items():
        model.load_state_dict(state)
        weights[silo] = aggregation.weight(model, 100, silo)
        aggregation.add(total, model, weights[silo])
    aggregation.apply(model, global_state, total.reduce(lambda flat: flat), 0)
    aggregation.end_round(global_state, 2, weights)
    w0, w1 = math.exp(0.5), math.exp(-1.0)
    key = QUERY + ".lora_A.default.weight"
    torch.testing.assert_close(global_state[key], (w0 * states[0][key] + w1 * states[1][key]) / (w0 + w1))
    assert aggregation.rounds[0]["weights"] == pytest.approx({0: w0 / (w0 + w1), 1: w1 / (w0 + w1)}, abs=1e-6)


def test_exact_aggregation_folds_the_weighted_mean_of_the_products_into_the_base():
    model, keys = adapted_model()
    base = model.state_dict()[QUERY + ".base_layer.weight"].clone()
    frozen_before = {key: value.clone() for key, value in model.state_dict().items()
                     if ".lora_" not in key and not key.startswith("classifier.") and "base_layer.weight" not in key}
    sizes = {0: 30, 1: 10}
    states = {silo: silo_state(model, 20 + silo) for silo in sizes}
    aggregation = ExactAggregation(keys, ServerOptimizer(ServerOptimizerSettings()), lambda flat: flat,
                                   SETTINGS.scaling, seed=3)
    global_state = {key: value.clone() for key, value in model.state_dict().items()}
    total = aggregation.new_sum(global_state)
    for silo, state in states.items():
        model.load_state_dict(state)
        aggregation.add(total, model, float(sizes[silo]))
    aggregation.apply(model, global_state, total.reduce(lambda flat: flat), 0)

    def product(state):
        return state[QUERY + ".lora_B.default.weight"] @ state[QUERY + ".lora_A.default.weight"]
    mean_product = (30 * product(states[0]) + 10 * product(states[1])) / 40

    def mean(name):
        return (30 * states[0][QUERY + name] + 10 * states[1][QUERY + name]) / 40
    mean_a_times_mean_b = mean(".lora_B.default.weight") @ mean(".lora_A.default.weight")
    assert not torch.allclose(mean_product, mean_a_times_mean_b, atol=1e-3)  # why "exact" exists
    torch.testing.assert_close(global_state[QUERY + ".base_layer.weight"], base + 2.0 * mean_product)
    assert torch.count_nonzero(global_state[QUERY + ".lora_B.default.weight"]) == 0  # adapters restart
    torch.testing.assert_close(global_state["classifier.weight"],
                               (30 * states[0]["classifier.weight"] + 10 * states[1]["classifier.weight"]) / 40)
    for key, value in frozen_before.items():  # the base changes only where an update was folded in
        assert torch.equal(global_state[key], value), key


def test_bytes_per_round_count_what_each_rule_sends():
    model, keys = adapted_model()
    state = model.state_dict()
    adapters = sum(state[key].numel() * 4 for key in keys if ".lora_" in key)
    head = sum(state[key].numel() * 4 for key in keys if key.startswith("classifier."))
    server = ServerOptimizer(ServerOptimizerSettings())
    weighted = Aggregation(keys, server, lambda flat: flat).round_bytes(state, silos=3).record()
    assert weighted["bytes_up_per_silo"] == weighted["bytes_down_per_silo"] == adapters + head
    assert weighted["bytes_up_per_round"] == 3 * (adapters + head)
    exact = ExactAggregation(keys, server, lambda flat: flat, 2.0, 0).round_bytes(state, silos=3).record()
    assert exact["bytes_up_per_silo"] == adapters + head
    assert exact["bytes_down_per_silo"] == 3 * adapters + head  # every silo's A and B, and the averaged head
    full = Aggregation(None, server, lambda flat: flat).round_bytes(state, silos=1).record()
    assert full["bytes_up_per_silo"] == sum(v.numel() * 4 for v in state.values() if v.is_floating_point())

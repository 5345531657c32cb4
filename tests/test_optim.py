"""Learning-rate schedule: linear warm-up then polynomial (power 2) decay, on hand-computed points."""
import pytest
import torch
from transformers import get_polynomial_decay_schedule_with_warmup

from fedbiobert.optim import Schedule, build_optimizer, learning_rate


def test_hand_computed_points():
    # 100 steps, 10 warm-up, peak 1.0, end 0.0
    assert learning_rate(0, 100, 10, 1.0, 0.0) == pytest.approx(0.1)
    assert learning_rate(9, 100, 10, 1.0, 0.0) == pytest.approx(1.0)
    assert learning_rate(10, 100, 10, 1.0, 0.0) == pytest.approx(1.0)
    assert learning_rate(55, 100, 10, 1.0, 0.0) == pytest.approx(0.25)  # (1 - 45/90)^2
    assert learning_rate(100, 100, 10, 1.0, 0.1) == pytest.approx(0.1)


def test_matches_transformers_polynomial_schedule_after_warmup():
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=5e-4)
    reference = get_polynomial_decay_schedule_with_warmup(optimizer, 6, 60, lr_end=1e-6, power=2.0)
    schedule = Schedule(60, 0.1, 5e-4, 1e-6)
    for step in range(60):
        expected = optimizer.param_groups[0]["lr"]
        if step >= 6:  # HF's warm-up starts at 0; ours starts at peak/warmup (a step at lr 0 is wasted)
            assert schedule(step) == pytest.approx(expected, rel=1e-6)
        optimizer.step()
        reference.step()


def test_no_weight_decay_on_bias_and_layernorm_and_tied_weights_once():
    layer = torch.nn.Linear(2, 2)
    norm = torch.nn.LayerNorm(2)
    named = [("dense.weight", layer.weight), ("dense.bias", layer.bias), ("LayerNorm.weight", norm.weight),
             ("tied.weight", layer.weight)]
    optimizer = build_optimizer(named, weight_decay=0.01)
    decay, no_decay = optimizer.param_groups
    assert decay["params"] == [layer.weight] and decay["weight_decay"] == 0.01
    assert no_decay["params"] == [layer.bias, norm.weight] and no_decay["weight_decay"] == 0.0

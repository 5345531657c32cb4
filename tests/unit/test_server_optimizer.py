"""FedOpt's server optimisers on hand-computed cases (Reddi et al. 2021, Algorithm 2)."""
import math

import pytest
import torch

from fedbiobert.model import ModelSpec, build_config, build_full_model
from fedbiobert.server_optimizer import ServerOptimizer, ServerOptimizerSettings


def _optimizer(kind, **settings):
    return ServerOptimizer(ServerOptimizerSettings(kind, **settings))


def _real_weights_and_average():
    """A tiny BERT's weights, and a FedAvg of three silos that each moved them a little."""
    model = build_full_model(build_config(ModelSpec("bert", 500, 32, 2, 64, 2, 32, 0)), seed=0)
    start = {key: value.clone() for key, value in model.state_dict().items() if value.is_floating_point()}
    generator = torch.Generator().manual_seed(1)
    silos = [{key: value + 1e-3 * torch.randn(value.shape, generator=generator) for key, value in start.items()}
             for _ in range(3)]
    average = {key: (silos[0][key] * 5 + silos[1][key] * 3 + silos[2][key] * 2) / 10 for key in start}
    return start, average


def test_fedavgm_without_momentum_at_lr_1_is_fedavg_bit_for_bit():
    start, average = _real_weights_and_average()
    stepped = _optimizer("fedavgm", lr=1.0, momentum=0.0).step(start, average)
    assert all(torch.equal(stepped[key], average[key]) for key in average)
    assert _optimizer("fedavg").step(start, average) is average


def test_fedavgm_accumulates_momentum_by_hand():
    optimizer = _optimizer("fedavgm", lr=2.0, momentum=0.5)
    w = {"w": torch.tensor([1.0, -2.0])}
    first = optimizer.step(w, {"w": torch.tensor([0.5, -1.0])})  # g = [0.5, -1], m = g
    assert torch.equal(first["w"], torch.tensor([0.0, 0.0]))       # w - 2 * m
    second = optimizer.step(first, {"w": torch.tensor([0.25, 0.0])})  # g = [-0.25, 0], m = 0.5*m + g = [0, -0.5]
    assert torch.equal(second["w"], torch.tensor([0.0, 1.0]))


def test_fedadam_step_equals_the_formula_by_hand():
    optimizer = _optimizer("fedadam", lr=0.1, beta1=0.9, beta2=0.99, tau=1e-3)
    stepped = optimizer.step({"w": torch.tensor([1.0])}, {"w": torch.tensor([0.5])})
    g = 0.5                              # w - avg
    m = 0.1 * g                          # (1 - beta1) g
    v = 0.01 * g * g                     # (1 - beta2) g^2
    assert stepped["w"].item() == pytest.approx(1.0 - 0.1 * m / (math.sqrt(v) + 1e-3), rel=1e-6)
    again = optimizer.step(stepped, {"w": stepped["w"] + 0.2})  # g = -0.2
    m2, v2 = 0.9 * m + 0.1 * -0.2, 0.99 * v + 0.01 * 0.04
    assert again["w"].item() == pytest.approx(stepped["w"].item() - 0.1 * m2 / (math.sqrt(v2) + 1e-3), rel=1e-6)


def test_fedyogi_moves_v_by_at_most_one_minus_beta2_times_g_squared():
    optimizer = _optimizer("fedyogi", lr=0.1, beta1=0.0, beta2=0.9, tau=1e-3)
    optimizer.step({"w": torch.tensor([0.0])}, {"w": torch.tensor([-1.0])})  # g = 1: v = 0 - 0.1*1*sign(-1) = 0.1
    assert optimizer.second["w"].item() == pytest.approx(0.1)
    stepped = optimizer.step({"w": torch.tensor([0.0])}, {"w": torch.tensor([-0.1])})  # g = 0.1, g^2 = 0.01 < v
    v = 0.1 - 0.1 * 0.01 * 1.0           # v - (1 - b2) g^2 sign(v - g^2)
    assert optimizer.second["w"].item() == pytest.approx(v)
    assert stepped["w"].item() == pytest.approx(-0.1 * 0.1 / (math.sqrt(v) + 1e-3), rel=1e-6)


@pytest.mark.parametrize("kind", ["fedavgm", "fedadam", "fedyogi"])
def test_a_restored_state_continues_bit_for_bit(kind):
    start, average = _real_weights_and_average()
    uninterrupted = _optimizer(kind, lr=0.05)
    after_one = uninterrupted.step(start, average)
    saved = uninterrupted.state_dict()
    restored = _optimizer(kind, lr=0.05)
    restored.load_state_dict(saved)
    second_average = {key: value + 1e-4 for key, value in after_one.items()}
    expected, got = uninterrupted.step(after_one, second_average), restored.step(after_one, second_average)
    assert all(torch.equal(expected[key], got[key]) for key in expected)


def test_another_optimizer_in_the_checkpoint_is_refused():
    saved = _optimizer("fedadam").state_dict()
    with pytest.raises(ValueError, match="the checkpoint's server optimizer is 'fedadam'"):
        _optimizer("fedyogi").load_state_dict(saved)

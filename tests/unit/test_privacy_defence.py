"""The activation defence (fedbiobert/privacy/defence.py) and its engine options, --activation_noise and
--activation_clip: what the mechanism does to a tensor, and which values a run accepts."""
import math

import pytest
import torch

from fedbiobert.config import ConfigError, parse_config, validate_static
from fedbiobert.privacy.defence import Defence, clip_per_token, defend


def _hidden(seed: int = 0) -> torch.Tensor:
    return 3 * torch.randn((4, 10, 16), generator=torch.Generator().manual_seed(seed))


def test_no_defence_is_the_identity_and_draws_no_random_number():
    hidden = _hidden()
    state = torch.get_rng_state()
    assert defend(hidden, Defence()) is hidden
    assert torch.equal(torch.get_rng_state(), state)  # runs without the options stay bit-identical


def test_clipping_bounds_every_token_and_keeps_short_ones():
    hidden = _hidden()
    clip = float(hidden.norm(dim=-1).median())
    clipped = clip_per_token(hidden, clip)
    norms, before = clipped.norm(dim=-1), hidden.norm(dim=-1)
    assert float(norms.max()) <= clip * (1 + 1e-5)
    short = before <= clip
    assert torch.allclose(clipped[short], hidden[short])
    # a long vector keeps its direction
    assert torch.allclose(torch.nn.functional.cosine_similarity(clipped, hidden, dim=-1), torch.ones_like(norms))


def test_noise_has_the_asked_scale_and_is_seeded():
    hidden = torch.zeros((64, 32, 48))
    noisy = defend(hidden, Defence(sigma=0.7), torch.Generator().manual_seed(3))
    assert abs(float(noisy.std()) - 0.7) < 0.01 and abs(float(noisy.mean())) < 0.01
    again = defend(hidden, Defence(sigma=0.7), torch.Generator().manual_seed(3))
    assert torch.equal(noisy, again)


def test_noise_passes_the_gradient_through_unchanged():
    """FedBERT's client applies the server's gradient w.r.t. the noisy activation to the clean one: exact
    for additive noise."""
    hidden = _hidden().requires_grad_()
    weights = torch.randn(hidden.shape)
    (defend(hidden, Defence(sigma=2.0)) * weights).sum().backward()
    assert torch.allclose(hidden.grad, weights)


def test_noise_multiplier_and_labels():
    assert Defence(2.0, 4.0).noise_multiplier == 0.5
    assert Defence(2.0).noise_multiplier is None
    assert Defence().label() == "none" and Defence(1.0, 5.0).label() == "clip 5, sigma 1"
    with pytest.raises(ValueError, match="sigma -1"):
        Defence(-1.0)


@pytest.mark.parametrize("flag,value", [("--activation_noise", "-0.5"), ("--activation_clip", "-1"),
                                        ("--activation_noise", "nan"), ("--activation_clip", "inf")])
def test_bad_values_are_one_line_errors(flag, value):
    with pytest.raises(ConfigError) as error:
        validate_static(parse_config([flag, value]))
    message = str(error.value)
    assert flag in message and "\n" not in message


@pytest.mark.parametrize("algorithm", ["fedbiobert", "fedbert"])
def test_split_algorithms_accept_the_options(algorithm):
    config = parse_config(["--algorithm", algorithm, "--activation_noise", "0.5", "--activation_clip", "4"])
    validate_static(config)
    defence = Defence.from_config(config)
    assert defence.sigma == 0.5 and defence.clip == 4.0 and math.isclose(defence.noise_multiplier, 0.125)


def test_the_options_need_a_split_algorithm():
    with pytest.raises(ConfigError, match="--activation_noise 0.5 applies to split algorithms"):
        validate_static(parse_config(["--algorithm", "fedavg", "--activation_noise", "0.5"]))

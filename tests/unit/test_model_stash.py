"""Weight stashing: a graph kept across optimizer steps back-propagates with the forward's weights."""
import copy

import pytest
import torch
from torch import nn

from fedbiobert.model import stash_weights


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.GELU(), nn.LayerNorm(8), nn.Linear(8, 3))


def test_late_backward_uses_the_forward_time_weights():
    net = _net()
    optimizer = torch.optim.AdamW(net.parameters(), lr=0.1)
    first, second = torch.randn(2, 4), torch.randn(2, 4)
    reference = copy.deepcopy(net)
    reference(first).sum().backward()
    with stash_weights(net):
        kept = net(first)
    net(second).sum().backward()
    optimizer.step()  # in-place update between the kept forward and its backward
    optimizer.zero_grad()
    kept.sum().backward()
    for (name, param), (_, expected) in zip(net.named_parameters(), reference.named_parameters()):
        torch.testing.assert_close(param.grad, expected.grad, msg=name)


def test_without_stashing_the_same_schedule_fails():
    net = _net()
    optimizer = torch.optim.AdamW(net.parameters(), lr=0.1)
    kept = net(torch.randn(2, 4))
    net(torch.randn(2, 4)).sum().backward()
    optimizer.step()
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        kept.sum().backward()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_late_backward_under_autocast_uses_the_forward_time_weights(dtype):
    """Under autocast the matmuls save bf16/fp16 casts of the weights (copies, made at the forward: the
    stash hook leaves them alone, as they share no storage with a parameter) and the LayerNorm its fp32
    weight itself (which the hook copies); either way the kept graph back-propagates with the forward's
    weights after an in-place step, exactly as the same forward back-propagated at once."""
    net = _net()
    optimizer = torch.optim.AdamW(net.parameters(), lr=0.1)
    first, second = torch.randn(2, 4), torch.randn(2, 4)
    reference = copy.deepcopy(net)
    with torch.autocast("cpu", dtype=dtype):
        reference(first).float().sum().backward()
    with stash_weights(net), torch.autocast("cpu", dtype=dtype):
        kept = net(first)
    assert kept.dtype == dtype  # the forward did run in the low precision
    with torch.autocast("cpu", dtype=dtype):
        net(second).float().sum().backward()
    optimizer.step()  # in-place update between the kept forward and its backward
    optimizer.zero_grad()
    kept.float().sum().backward()
    for (name, param), (_, expected) in zip(net.named_parameters(), reference.named_parameters()):
        assert param.dtype == torch.float32 and param.grad.dtype == torch.float32
        torch.testing.assert_close(param.grad, expected.grad, msg=name)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_under_autocast_stashing_is_still_needed(dtype):
    """The LayerNorm saves its fp32 weight itself under autocast: without stashing the step breaks the graph."""
    net = _net()
    optimizer = torch.optim.AdamW(net.parameters(), lr=0.1)
    with torch.autocast("cpu", dtype=dtype):
        kept, other = net(torch.randn(2, 4)), net(torch.randn(2, 4))
    other.float().sum().backward()
    optimizer.step()
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        kept.float().sum().backward()

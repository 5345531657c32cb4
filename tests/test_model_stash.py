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

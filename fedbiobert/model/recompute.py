"""What a server keeps of a forward whose backward comes later: the graph, or what recomputes it.

With the head on the client, a fedbiobert server forwards batch b, sends OUTPUT, and only
back-propagates when the client's GRAD for b arrives, after it has stepped on other batches. Two ways
to keep b until then, both exact:

- `KeptGraph` (default): the autograd graph, with the forward's weights stashed (model/stash.py).
  Memory per batch: every layer's saved activations (attention probabilities, dropout masks, the
  feed-forward's inner activations) plus one copy of the weights.
- `RecomputedForward` (--server_recompute True): the forward's inputs, its RNG state and one copy of
  the weights it used; the forward runs again, with that copy and those dropout masks, when the GRAD
  comes. Memory per batch: the input activation plus one copy of the weights; time: one more
  forward per batch.

Sizes (BERT-base, 6 server layers, batch 16, length 512, fp32): the weights are 170 MB and the input
25 MB, while one graph's saved activations are several GB (per layer about 0.2 GB of feed-forward
activations and a few 25 MB hidden-state tensors, plus, with eager attention, 12 x 512 x 512 scores,
probabilities and dropout masks per sequence, about 0.6 GB). A server keeps up to --max_inflight + 1
batches per client process, so kept graphs dominate its memory; `python -m fedbiobert.bench.memory`
measures both modes on this machine.

The recomputed gradients equal the kept graph's: same weights (the copy), same inputs, same dropout
masks (the RNG state before the forward, restored around the recomputation, which leaves the RNG
stream where it was), and they are added into the live parameters' .grad exactly as the graph's
backward would.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch.func import functional_call

from fedbiobert.model.stash import stash_weights

# compute(call) runs the forward, calling the module through `call` (the module itself, or the module
# with other weights), and returns the tensor the later GRAD is the gradient of.
Compute = Callable[[Callable[..., torch.Tensor]], torch.Tensor]


class KeptGraph:
    """The forward's graph, weights stashed; backward when the gradient comes."""

    def __init__(self, module: torch.nn.Module, compute: Compute):
        with stash_weights(module):
            self.output = compute(module)

    def backward(self, grad: torch.Tensor) -> None:
        self.output.backward(grad)
        self.output = None  # frees the graph now, not when this object is dropped


class RecomputedForward:
    """Inputs + RNG state + the weights used; the forward runs again when the gradient comes."""

    def __init__(self, module: torch.nn.Module, compute: Compute):
        self.module, self.compute = module, compute
        self.device = next(module.parameters()).device
        self.rng_state = _rng_state(self.device)
        self.weights = {name: param.detach().clone() for name, param in module.named_parameters()}
        with torch.no_grad():
            self.output = compute(module)  # what is sent; no graph is built

    def backward(self, grad: torch.Tensor) -> None:
        live = dict(self.module.named_parameters())
        weights = {name: tensor.requires_grad_(live[name].requires_grad) for name, tensor in self.weights.items()}
        trainable = [name for name in weights if live[name].requires_grad]
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            _set_rng_state(self.device, self.rng_state)
            output = self.compute(lambda *args: functional_call(self.module, weights, args))
        grads = torch.autograd.grad(output, [weights[name] for name in trainable], grad, allow_unused=True)
        for name, value in zip(trainable, grads):
            if value is None:
                continue
            param = live[name]
            param.grad = value if param.grad is None else param.grad + value
        self.weights = self.compute = None  # frees the copy now


def keep_forward(module: torch.nn.Module, compute: Compute, recompute: bool) -> KeptGraph | RecomputedForward:
    return RecomputedForward(module, compute) if recompute else KeptGraph(module, compute)


def _rng_state(device: torch.device) -> tuple:
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), cuda


def _set_rng_state(device: torch.device, state: tuple) -> None:
    cpu, cuda = state
    torch.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state(cuda, device)

"""Federated averaging of state dicts.

FedAvg (McMahan et al. 2017): the new global value of every averaged tensor is

    w_global = sum_k n_k * w_k / sum_k n_k

over the clients k that trained this round, where n_k is client k's number of training samples
(`--fl_aggregate scheme=federated_average,weighting=samples`, the default) or 1
(`weighting=uniform`, what the original research code did everywhere).

`weighted_average` is the pure form. `WeightedSum` is the form used across processes: each process
adds the states it trained, the processes sum their (flat) buffers with one all-reduce, and every
process divides by the summed weight. Non-floating tensors (integer buffers) are never averaged.
"""
from __future__ import annotations

from typing import Callable, Iterable

import torch

StateDict = dict[str, torch.Tensor]


def averaged_keys(state: StateDict, keys: Iterable[str] | None = None) -> list[str]:
    """The floating-point keys of `state` (restricted to `keys` if given), in a fixed order."""
    chosen = state.keys() if keys is None else keys
    return sorted(key for key in chosen if torch.is_floating_point(state[key]))


def weighted_average(states: list[StateDict], weights: list[float], keys: Iterable[str] | None = None) -> StateDict:
    """sum_k weights[k] * states[k][key] / sum_k weights[k], for every averaged key."""
    if not states or len(states) != len(weights):
        raise ValueError(f"need one weight per state, got {len(states)} states and {len(weights)} weights")
    total = float(sum(weights))
    if total <= 0:
        raise ValueError(f"weights {weights} sum to {total}; at least one must be positive")
    result = {}
    for key in averaged_keys(states[0], keys):
        acc = sum(float(weight) * state[key].double() for state, weight in zip(states, weights))
        result[key] = (acc / total).to(states[0][key].dtype)
    return result


class WeightedSum:
    """Running sum of weight * state over the states one process trained, for a cross-process FedAvg."""

    def __init__(self, template: StateDict, keys: Iterable[str] | None = None):
        self.keys = averaged_keys(template, keys)
        self.shapes = [(key, template[key].shape, template[key].dtype) for key in self.keys]
        numel = sum(template[key].numel() for key in self.keys)
        self.flat = torch.zeros(numel + 1, dtype=torch.float32)  # last slot: the sum of weights

    def add(self, state: StateDict, weight: float) -> None:
        offset = 0
        for key, shape, _ in self.shapes:
            size = shape.numel()
            self.flat[offset: offset + size].add_(state[key].detach().reshape(-1).float().cpu(), alpha=weight)
            offset += size
        self.flat[-1] += weight

    def reduce(self, sum_across_processes: Callable[[torch.Tensor], torch.Tensor]) -> StateDict | None:
        """Sum across processes (identity for one process), divide; None if nobody trained."""
        total = sum_across_processes(self.flat).cpu()
        weight = float(total[-1])
        if weight <= 0:
            return None
        return self._unflatten(total[:-1] / weight)

    def _unflatten(self, flat: torch.Tensor) -> StateDict:
        state, offset = {}, 0
        for key, shape, dtype in self.shapes:
            size = shape.numel()
            state[key] = flat[offset: offset + size].reshape(shape).to(dtype)
            offset += size
        return state

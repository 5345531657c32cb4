"""Server-side optimisers on an averaged part (FedOpt: Reddi et al. 2021, "Adaptive Federated Optimization").

At a round's end the aggregator holds the round-start weights w and the FedAvg of the silos' weights
avg. FedAvg replaces w by avg. FedOpt treats the pseudo-gradient

    g = w - avg                          (minus the average update of the round)

as a gradient and steps an optimiser of its own (Algorithm 2 of the paper, no bias correction):

    fedavg   w <- avg                                    (kept exact: no arithmetic at all)
    fedavgm  m <- beta * m + g;            w <- w - lr * m          (Hsu et al. 2019; torch SGD's momentum)
    fedadam  m <- b1 * m + (1 - b1) * g;   v <- b2 * v + (1 - b2) * g^2;               w <- w - lr * m / (sqrt(v) + tau)
    fedyogi  m as fedadam;                 v <- v - (1 - b2) * g^2 * sign(v - g^2);    w <- w - lr * m / (sqrt(v) + tau)

Why it matters here: every part trained by silos in parallel and then averaged (client parts, the whole
model in fedavg, the MLM head when it lives on the client) moves by the mean of K silos' updates, about one
silo's worth of progress a round, while a part one server trains on every silo's batches in turn moves by
all of them. A server learning rate above 1 (or momentum) gives the averaged parts their progress back.

The arithmetic is done in float64 from the float32 weights: there w - (w - avg) == avg for the weights of
any real model (the difference of two float32 is exact in float64 unless their exponents are 29 apart),
so fedavgm with lr 1 and momentum 0 equals fedavg bit for bit. Moments are kept in float32: at BERT-base
a client part is 363 MB, and fedadam keeps two more of it per averaged part, on each process that
averages it (every client process computes the same step from the same inputs: no traffic, no drift).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from fedbiobert.constants import SERVER_OPTIMIZERS

StateDict = dict[str, torch.Tensor]


@dataclass(frozen=True)
class ServerOptimizerSettings:
    kind: str = "fedavg"
    lr: float = 1.0
    momentum: float = 0.9      # fedavgm
    beta1: float = 0.9         # fedadam, fedyogi
    beta2: float = 0.99
    tau: float = 1e-3          # adaptivity: the smallest root of v that divides the step

    @classmethod
    def from_config(cls, config) -> "ServerOptimizerSettings":
        return cls(config.server_optimizer, config.server_lr, config.server_momentum, config.server_beta1,
                   config.server_beta2, config.server_tau)


class ServerOptimizer:
    """One averaged part's optimiser. `step(current, averaged)` returns the part's new weights for every
    key of `averaged`; its moments (`state_dict`) are saved with the run's checkpoint."""

    def __init__(self, settings: ServerOptimizerSettings):
        if settings.kind not in SERVER_OPTIMIZERS:
            raise ValueError(f"server optimizer '{settings.kind}' (accepted: {', '.join(SERVER_OPTIMIZERS)})")
        self.settings = settings
        self.first: StateDict = {}   # m: momentum (fedavgm) or first moment (fedadam, fedyogi)
        self.second: StateDict = {}  # v: second moment (fedadam, fedyogi)
        self.steps = 0

    def step(self, current: StateDict, averaged: StateDict) -> StateDict:
        self.steps += 1
        if self.settings.kind == "fedavg":
            return averaged
        return {key: self._step_one(key, current[key], value) for key, value in averaged.items()}

    def _step_one(self, key: str, weight: torch.Tensor, average: torch.Tensor) -> torch.Tensor:
        settings = self.settings
        weight64 = weight.detach().to("cpu", torch.float64)
        gradient = weight64 - average.detach().to("cpu", torch.float64)
        if settings.kind == "fedavgm":
            momentum = self._moment(self.first, key, gradient, lambda m: settings.momentum * m + gradient)
            return (weight64 - settings.lr * momentum).to(weight.dtype)
        first = self._moment(self.first, key, gradient, lambda m: settings.beta1 * m + (1 - settings.beta1) * gradient)
        squared = gradient * gradient
        if settings.kind == "fedadam":
            update = lambda v: settings.beta2 * v + (1 - settings.beta2) * squared  # noqa: E731
        else:  # fedyogi: v moves towards g^2 by at most (1 - beta2) g^2, whatever v's size
            update = lambda v: v - (1 - settings.beta2) * squared * torch.sign(v - squared)  # noqa: E731
        second = self._moment(self.second, key, gradient, update)
        return (weight64 - settings.lr * first / (second.sqrt() + settings.tau)).to(weight.dtype)

    def _moment(self, store: StateDict, key: str, gradient: torch.Tensor, update) -> torch.Tensor:
        """Apply `update` to the stored moment (zeros the first time, as in the paper), keep it in
        float32, return it in float64 for the step."""
        previous = store[key].to(torch.float64) if key in store else torch.zeros_like(gradient)
        value = update(previous)
        store[key] = value.to(torch.float32)
        return value

    def state_dict(self) -> dict:
        return {"kind": self.settings.kind, "steps": self.steps, "first": dict(self.first),
                "second": dict(self.second)}

    def load_state_dict(self, state: dict) -> None:
        if state["kind"] != self.settings.kind:
            raise ValueError(f"the checkpoint's server optimizer is '{state['kind']}', this run's "
                             f"--server_optimizer is '{self.settings.kind}'")
        self.steps, self.first, self.second = int(state["steps"]), dict(state["first"]), dict(state["second"])

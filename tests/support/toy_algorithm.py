"""An algorithm added from outside the package, in one file plus its registry line (the acceptance
test of fedbiobert/algorithms/base.py, "Adding an algorithm"): FedProx (Li et al. 2020), FedAvg whose
clients minimise their loss plus the proximal term mu/2 ||w - w_round||^2, which holds each silo's
update near the round's global model (w_round) on heterogeneous silos. Run it with

    fedbiobert-run --algorithm_module tests.support.toy_algorithm --algorithm fedprox ...

Observable, so a test can tell it was used: its client steps report the proximal objective as
local_loss (FedAvg reports none), and its --n_clients default is its own (3).
"""
from __future__ import annotations

from fedbiobert.algorithms import register
from fedbiobert.algorithms.base import StepResult, loss_value
from fedbiobert.algorithms.fedavg import FedAvg, FullModelClient, full_model_loss


class FedProxClient(FullModelClient):
    def __init__(self, algorithm, model, silo_id: int):
        super().__init__(algorithm, model, silo_id)
        self.mu = algorithm.mu
        # A trainer is built once the silo's model holds the round's global weights: those are w_round.
        self.anchor = [param.detach().clone() for param in self.stepper.parameters]

    def step(self, batch, global_step: int) -> StepResult:
        loss = full_model_loss(self.model, batch, self.precision)
        drift = sum(((param - anchor) ** 2).sum() for param, anchor in zip(self.stepper.parameters, self.anchor))
        objective = loss + 0.5 * self.mu * drift
        self.stepper.backward(objective)
        self.stepper.step(global_step)
        return StepResult(local_loss=loss_value(objective), global_loss=loss_value(loss),
                          tokens=int(batch.attention_mask.sum()), step=global_step, silo_id=self.silo_id)


class FedProx(FedAvg):
    name = "fedprox"
    summary = "FedAvg with a proximal term (a toy of the tests: tests/support/toy_algorithm.py)"
    default_n_clients = 3
    mu = 0.01  # the proximal term's weight

    def client_trainer(self, model, channel, server_rank, silo_id, round_idx) -> FedProxClient:
        return FedProxClient(self, model, silo_id)


register(FedProx)

"""Full-model baselines: FedAvg (McMahan et al. 2017; for BERT pre-training, Liu & Miller 2020)
and centralized training.

FedAvg: every client process trains the whole masked-LM on its silos, and the round ends with the
sample-weighted average of the models (the roles' FedAvg). There is no server and nothing crosses
the wire during a round. Centralized: the same trainer on one process with one silo holding all the
data: the quality reference at equal tokens.
"""
from __future__ import annotations

import torch

from fedbiobert.algorithms.base import Algorithm, ClientTrainer, StepResult, loss_value, split_model_lazily
from fedbiobert.config import ConfigError
from fedbiobert.model.mlm import gather_masked, masked_positions, mlm_loss
from fedbiobert.precision import autocast


def full_model_loss(model, batch, precision: str) -> torch.Tensor:
    """The masked-LM loss of the whole model (every encoder layer, the final head) on a batch."""
    positions = masked_positions(batch.labels)
    with autocast(precision, model):
        hidden = model(batch.input_ids, batch.attention_mask)  # every encoder layer
        return mlm_loss(model.final_logits(gather_masked(hidden, positions)), batch.labels.reshape(-1)[positions])


class FullModelClient(ClientTrainer):
    def __init__(self, algorithm, model, silo_id: int):
        self.model, self.silo_id = model, silo_id
        self.precision = algorithm.config.precision
        self.stepper = algorithm.stepper(model)

    def step(self, batch, global_step: int) -> StepResult:
        loss = full_model_loss(self.model, batch, self.precision)
        self.stepper.backward(loss)
        self.stepper.step(global_step)
        return StepResult(global_loss=loss_value(loss), tokens=int(batch.attention_mask.sum()), step=global_step,
                          silo_id=self.silo_id)

    def finish(self) -> list[StepResult]:
        return []


class FedAvg(Algorithm):
    name = "fedavg"
    summary = "full model on every client"

    def split(self, full_model):
        client, _ = split_model_lazily(full_model, self.config.num_layers, "client")  # the whole model on the client
        return client, None

    def client_trainer(self, model, channel, server_rank, silo_id, round_idx) -> FullModelClient:
        return FullModelClient(self, model, silo_id)


class Centralized(FedAvg):
    """One process, one silo with all the data: nothing is exchanged."""
    name = "centralized"
    summary = "one process, all data"
    default_n_clients = 1
    exchanges_model = False

    @classmethod
    def check_config(cls, config) -> None:
        if config.n_clients != 1:
            raise ConfigError(f"--n_clients {config.n_clients} must be 1 for --algorithm centralized "
                              "(one process trains on all the data)")

    @classmethod
    def check_world(cls, config, world_size: int) -> None:
        if world_size != 1:
            raise ConfigError(f"--algorithm centralized runs on 1 process, not {world_size}")

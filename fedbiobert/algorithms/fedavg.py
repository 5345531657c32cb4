"""Full-model baselines: FedAvg (McMahan et al. 2017; for BERT pre-training, Liu & Miller 2020)
and centralized training.

FedAvg: every client process trains the whole masked-LM on its silos, and the round ends with the
sample-weighted average of the models (the roles' FedAvg). There is no server and nothing crosses
the wire during a round. Centralized: the same trainer on one process with one silo holding all the
data: the quality reference at equal tokens.
"""
from __future__ import annotations

from fedbiobert.algorithms.base import Algorithm, ClientTrainer, Stepper, StepResult, loss_value
from fedbiobert.model import client_state_keys, gather_masked, masked_positions, mlm_loss, split_model
from fedbiobert.precision import autocast


class FullModelClient(ClientTrainer):
    def __init__(self, algorithm, model, client_id: int):
        config = algorithm.config
        self.model, self.client_id = model, client_id
        self.precision = config.precision
        self.stepper = Stepper(model, algorithm.session.schedule, config.weight_decay, config.max_grad_norm,
                               precision=self.precision)

    def step(self, batch, global_step: int) -> StepResult:
        positions = masked_positions(batch.labels)
        with autocast(self.precision, self.model):
            hidden = self.model(batch.input_ids, batch.attention_mask)  # every encoder layer
            loss = mlm_loss(self.model.final_logits(gather_masked(hidden, positions)),
                            batch.labels.reshape(-1)[positions])
        self.stepper.backward(loss)
        self.stepper.step(global_step)
        return StepResult(global_loss=loss_value(loss), tokens=int(batch.attention_mask.sum()), step=global_step,
                          client_id=self.client_id)

    def finish(self) -> list[StepResult]:
        return []


class FedAvg(Algorithm):
    name = "fedavg"

    def split(self, full_model):
        client, _ = split_model(full_model, self.config.num_layers, "client")  # the whole model on the client
        return client, None

    def federated_client_keys(self, client_model) -> list[str]:
        # No local loss here: the auxiliary head is never trained, so it is never exchanged either.
        keys = client_state_keys(client_model, self.config.fedavg_embedding_head)
        return [key for key in keys if not key.startswith("aux_head.")]

    def client_trainer(self, model, channel, server_rank, client_id, round_idx) -> FullModelClient:
        return FullModelClient(self, model, client_id)

    def server_trainer(self, model, channel, round_idx):
        raise RuntimeError(f"{self.name} has no server")


class Centralized(FedAvg):
    """One process, one silo with all the data (validated in config: world 1, n_clients 1)."""
    name = "centralized"

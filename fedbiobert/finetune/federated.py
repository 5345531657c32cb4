"""Federated fine-tuning: FedAvg of the whole model over silos (of the task head alone for a probe).

Each round the engine's `Topology` samples the round's silos (`sample_silos`, via `silos_for`);
every process trains its sampled silos in turn from the global weights with a fresh optimizer
(stateless clients, as in FedAvg; `--keep_silo_optimizer` keeps each silo's AdamW moments instead),
adds each result to the engine's `WeightedSum` with the silo's number of examples as weight, and one
sum across processes (identity for one process, an all-reduce under torchrun, `comm.Collectives`)
gives every process the average. The pre-training engine's server optimiser then takes it
(`--server_optimizer`: fedavg replaces the weights by it; fedavgm, fedadam, fedyogi step on the
pseudo-gradient, as in FedOpt, server_optimizer.py), identically on every process.

The learning rate of a silo follows one linear schedule over all its rounds x local epochs, so one
silo, one round and E local epochs retrace E centralized epochs exactly.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

import torch

from fedbiobert.finetune.aggregation import Aggregation
from fedbiobert.finetune.batching import num_batches
from fedbiobert.finetune.train import Hyper, LinearSchedule, finetune_optimizer, train_epochs
from fedbiobert.server_optimizer import ServerOptimizer, ServerOptimizerSettings
from fedbiobert.topology import Topology

logger = logging.getLogger(__name__)


@dataclass
class ProcessContext:
    """This process's place in a (possibly one-process) federation, and its two collectives."""
    rank: int = 0
    world_size: int = 1
    sum_across: Callable[[torch.Tensor], torch.Tensor] = lambda flat: flat
    broadcast: Callable[[object], object] = lambda value: value


def build_topology(n_clients: int, participation_ratio: float, seed: int, world_size: int) -> Topology:
    clients_per_round = max(1, round(n_clients * participation_ratio))
    return Topology(world_size=world_size, num_servers=0, n_clients=n_clients,
                    clients_per_round=clients_per_round, seed=seed)


@dataclass
class FederatedOptimisation:
    """How the averaged model and the silos' optimisers carry over from round to round."""
    server: ServerOptimizerSettings = ServerOptimizerSettings()
    keep_silo_optimizer: bool = False

    @classmethod
    def from_options(cls, options) -> "FederatedOptimisation":
        return cls(ServerOptimizerSettings(options.server_optimizer, options.server_lr, options.server_momentum,
                                           options.server_beta1, options.server_beta2, options.server_tau),
                   options.keep_silo_optimizer)


def train_silo(model, examples: list, hyper: Hyper, rounds: int, local_epochs: int, round_idx: int,
               seed: int, silo_id: int, pad_id: int, optimizer_state: dict | None = None):
    """One silo's local epochs of round `round_idx`, from the weights the model holds now (and from
    `optimizer_state`, its AdamW of the last round, if kept): (losses, the optimizer's state)."""
    optimizer = finetune_optimizer(model, hyper)
    if optimizer_state is not None:
        optimizer.load_state_dict(optimizer_state)
    schedule = LinearSchedule(rounds * local_epochs * num_batches(len(examples), hyper.batch_size), hyper)
    first = round_idx * local_epochs
    losses = train_epochs(model, examples, hyper, optimizer, schedule, range(first, first + local_epochs),
                          seed, silo_id, pad_id)
    return losses, optimizer.state_dict()


def train_federated(model, silos: list[list], hyper: Hyper, rounds: int, local_epochs: int, seed: int,
                    pad_id: int, topology: Topology, context: ProcessContext = ProcessContext(),
                    on_round_end=lambda round_idx: False, averaged_keys: list[str] | None = None,
                    optimisation: FederatedOptimisation = FederatedOptimisation(),
                    aggregation: Aggregation | None = None) -> list[float]:
    """Up to `rounds` federated rounds; stops when on_round_end(round) (same answer on every process).

    `averaged_keys`: the state keys to average (default every floating one). A probe passes its head's
    names: the frozen encoder is the same everywhere, and averaging it would only add rounding; fedlora
    its adapters' (and head's). `aggregation` (aggregation.py; default: FedAvg by examples, then the
    server optimiser) turns the round's models into the next global one and keeps the round's bytes."""
    global_state = {key: value.detach().clone() for key, value in model.state_dict().items()}
    if aggregation is None:
        aggregation = Aggregation(averaged_keys, ServerOptimizer(optimisation.server), context.sum_across)
    silo_optimizers: dict[int, dict] = {}  # --keep_silo_optimizer: silo_id -> its AdamW state
    losses = []
    for round_idx in range(rounds):
        total = aggregation.new_sum(global_state)
        chosen = topology.silos_for(topology.client_ranks[context.rank], round_idx)
        weights = {}
        for silo_id in chosen:
            model.load_state_dict(global_state)
            silo_losses, optimizer_state = train_silo(model, silos[silo_id], hyper, rounds, local_epochs,
                                                      round_idx, seed, silo_id, pad_id, silo_optimizers.get(silo_id))
            losses += silo_losses
            if optimisation.keep_silo_optimizer:
                silo_optimizers[silo_id] = optimizer_state
            weights[silo_id] = aggregation.weight(model, len(silos[silo_id]), silo_id)
            aggregation.add(total, model, weights[silo_id])
        aggregation.apply(model, global_state, total.reduce(context.sum_across), round_idx)
        aggregation.end_round(global_state, topology.clients_per_round, weights)
        logger.info("round %d/%d: silos %s on rank %d", round_idx + 1, rounds, chosen, context.rank)
        if on_round_end(round_idx):
            break
    return losses

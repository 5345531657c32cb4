"""The contract between the role loops (roles/) and an algorithm (what is computed and exchanged).

The roles own *when* things happen: rounds, which silos train, batches, round ends and
FedAvg. An algorithm owns *what* happens: how the model is split, what one client step computes and
sends, how a server handles a message, and which client tensors are federated. It also owns its
rules: class attributes and classmethods of its `Algorithm` subclass (is it split, its defaults, the
layers and head placements it needs, checks of its own), which the config checks read from the
registry before any process starts, as Flower's `Strategy` owns its own configuration.

Adding an algorithm (see tests/support/toy_algorithm.py, FedProx in one file):

1. Write one file with an `Algorithm` subclass, or a subclass of one (`SplitAlgorithm` when server
   processes train the model's second part; its trainers can build on `split_parts.py`): a `name`
   and `summary`, its rules where the defaults of `Algorithm` below do not fit, and its parts:
   `split` (SplitAlgorithm has it), `client_trainer`, and `server_trainer` for a split one.
2. Register it with one line:
   - in this package: an entry in `REGISTRY` in `algorithms/__init__.py`;
   - from your own code: `register(MyAlgorithm)` (`fedbiobert.algorithms.register`) at the end of
     its module, and the run names that module: `fedbiobert-run --algorithm_module my.module
     --algorithm my_name ...` (or `algorithm_module: my.module` in a --config file). The launcher and
     every process torchrun starts import it before checking the options, so `--algorithm` accepts
     the name it registers. It must be importable from the working directory or PYTHONPATH (the
     run's config.json records it); a resumed run is given it again, as every option.
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch

from fedbiobert.algorithms.stepper import Stepper
from fedbiobert.constants import HEAD_PLACEMENTS


@dataclass
class StepResult:
    """What one unit of work reports for metrics (None where it does not apply)."""
    local_loss: float | None = None
    global_loss: float | None = None
    tokens: int = 0
    step: int | None = None
    silo_id: int | None = None


class ClientTrainer(ABC):
    """Trains one silo for one communication round. Created fresh for each (silo, round)."""

    stepper: Stepper

    @property
    def steppers(self) -> list[Stepper]:
        """Every optimizer of this trainer (one unless parts of the model are stepped apart)."""
        return [self.stepper]

    @property
    def skipped_steps(self) -> int:
        """Optimizer steps skipped for a NaN/inf gradient, over every stepper."""
        return sum(stepper.skipped_steps for stepper in self.steppers)

    @abstractmethod
    def step(self, batch, global_step: int) -> StepResult:
        """One batch: forward, local update, and whatever is sent to the server."""

    @abstractmethod
    def finish(self) -> list[StepResult]:
        """End of this client's round: settle everything still in flight with the server."""

    def abandon(self) -> None:
        """This silo failed or ran out of time mid-round: close every exchange still open with the
        server without training on it (the server drops what it kept for those batches), so that
        the server and this process's next silo stay in step. Default: nothing is ever left open."""


class ServerTrainer(ABC):
    """Trains one server replica for one communication round on the messages of its clients."""

    @abstractmethod
    def handle(self, message) -> StepResult | None:
        """One message from a client (ACTIVATION, GRAD, ...), in arrival order."""

    @abstractmethod
    def finish(self) -> None:
        """End of round: every client process has said ROUND_DONE."""

    @property
    @abstractmethod
    def samples_seen(self) -> int:
        """Sequences this replica trained on this round (its FedAvg weight): batches it stepped on,
        not batches that arrived and were abandoned."""


class Algorithm(ABC):
    """An algorithm's rules (class attributes and classmethods: the config checks read them from the
    registry, before any process starts, with no instance and no model) and its parts (the instance
    methods a run calls). The defaults are those of a full-model algorithm (FedAvg)."""

    name: str = ""                    # --algorithm NAME
    summary: str = ""                 # what --help says of it
    is_split: bool = False            # the model is cut: server processes (the first ranks) train its second part
    default_num_servers: int = 0      # --num_device when not given
    default_n_clients: int = 4        # --n_clients when not given
    min_client_layers: int = 0        # --num_client_encoder at least this ...
    min_client_layers_why: str = ""   # ... for this reason (the error says it)
    min_server_layers: int = 0        # --num_server_encoder at least this
    head_placements: tuple[str, ...] = HEAD_PLACEMENTS  # the --head_placement values it accepts
    full_server_output: bool = False  # --server_output auto: the server's OUTPUT covers every position
    supports_server_recompute: bool = False  # --server_recompute True applies (with --head_placement client)
    trains_aux_head: bool = False     # a local loss trains the client's auxiliary head, so it is federated too
    exchanges_model: bool = True      # client parts reach an aggregator at each round end (False: one process)
    server_takes_turns: bool = False  # True: a server serves its client processes one at a time

    @classmethod
    def check_config(cls, config) -> None:
        """Checks of its own on the options alone, after the shared ones: raise ConfigError (one line)."""

    @classmethod
    def check_world(cls, config, world_size: int) -> None:
        """Checks of its own against a world of `world_size` processes: raise ConfigError (one line)."""

    @classmethod
    def resolve_for_world(cls, config, world_size: int):
        """The config a run of `world_size` processes uses (an `auto` of its own made concrete)."""
        return config

    @classmethod
    def global_loss_role(cls, config) -> str:
        """The role whose step events carry the final loss a round reports ("client" or "server")."""
        return "client"

    def __init__(self, session):
        self.session = session
        self.config = session.config

    def stepper(self, module: torch.nn.Module, skip: torch.nn.Module | None = None) -> Stepper:
        """An optimizer over `module` (less `skip`) with the run's schedule, weight decay, clipping and precision."""
        config = self.config
        return Stepper(module, self.session.schedule, config.weight_decay, config.max_grad_norm, skip=skip,
                       precision=config.precision)

    @abstractmethod
    def split(self, full_model) -> tuple[torch.nn.Module, torch.nn.Module | None]:
        """(client part, server part or None) of a freshly built full model."""

    def federated_client_keys(self, client_model: torch.nn.Module) -> list[str]:
        """The client tensors FedAvg averages; the others stay private to each silo."""
        from fedbiobert.model.split import AUX_HEAD_PREFIX, client_state_keys  # see split_model_lazily
        keys = client_state_keys(client_model, self.config.fedavg_embedding_head)
        if self.config.lora is not None:  # a frozen base is never exchanged: only what trains
            trained = {name for name, param in client_model.named_parameters() if param.requires_grad}
            keys = [key for key in keys if key in trained]
        if self.trains_aux_head:
            return keys
        # No local loss: the auxiliary head is never trained, so it is never exchanged either.
        return [key for key in keys if not key.startswith(AUX_HEAD_PREFIX)]

    @abstractmethod
    def client_trainer(self, model, channel, server_rank: int, silo_id: int, round_idx: int) -> ClientTrainer:
        ...

    def server_trainer(self, model, channel, round_idx: int) -> ServerTrainer:
        raise RuntimeError(f"{self.name} has no server")


class SplitAlgorithm(Algorithm):
    """The model cut after --num_client_encoder layers: client processes train the first part, server
    processes (the first --num_device ranks) the rest."""

    is_split = True
    default_num_servers = 1
    min_server_layers = 1

    @classmethod
    def global_loss_role(cls, config) -> str:
        return "server" if config.head_placement == "server" else "client"

    def split(self, full_model):
        return split_model_lazily(full_model, self.config.num_client_encoder, self.config.head_placement)

    @abstractmethod
    def server_trainer(self, model, channel, round_idx: int) -> ServerTrainer:
        ...


def loss_value(loss: torch.Tensor) -> float:
    value = float(loss.detach())
    return value if math.isfinite(value) else math.nan


def split_model_lazily(full_model, num_client_layers: int, head_placement: str):
    """model.split_model, imported when a model is split, not with this module: the option checks
    read every algorithm's rules before any work, and importing transformers (model/split.py) would
    cost them seconds (`fedbiobert-run --help` included)."""
    from fedbiobert.model.split import split_model
    return split_model(full_model, num_client_layers, head_placement)

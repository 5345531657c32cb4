"""The contract between the role loops (roles/) and an algorithm (what is computed and exchanged).

The roles own *when* things happen: rounds, which logical clients train, batches, round ends and
FedAvg. An algorithm owns *what* happens: how the model is split, what one client step computes and
sends, how a server handles a message, and which client tensors are federated. Adding an algorithm
means one new file with an `Algorithm` subclass and one line in `algorithms/__init__.py`.
"""
from __future__ import annotations

import logging
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch

from fedbiobert.comm.messages import Control, Kind, Message
from fedbiobert.model import gather_masked
from fedbiobert.optim import build_optimizer, set_learning_rate
from fedbiobert.precision import grad_scaler

logger = logging.getLogger(__name__)


@dataclass
class StepResult:
    """What one unit of work reports for metrics (None where it does not apply)."""
    local_loss: float | None = None
    global_loss: float | None = None
    tokens: int = 0
    step: int | None = None
    client_id: int | None = None


class Stepper:
    """An AdamW optimizer over a module's parameters (less those of `skip`, a submodule another
    Stepper owns), clipped on its own and stepped at the learning rate of a global step index.

    With --precision fp16 it owns a dynamic loss scaler (precision.grad_scaler): every backward
    into its parameters goes through `backward`, which scales; a gradient that leaves the process
    goes through `unscaled`; `step` unscales before clipping. The scaler skips a step whose scaled
    gradients overflowed and halves its scale: that is routine (a few times at the start of a run)
    and is counted in `scaler_skips`, not in `skipped_steps` (the --on_nonfinite failure). A
    skipped step counts as a failure only when the loss itself was NaN/inf, or when the scale had
    already fallen to FP16_FAILURE_SCALE (then the gradients overflow unscaled: the run has diverged).
    """

    FP16_FAILURE_SCALE = 1.0

    def __init__(self, module: torch.nn.Module, schedule, weight_decay: float, max_grad_norm: float | None,
                 skip: torch.nn.Module | None = None, precision: str = "fp32"):
        skipped = {id(param) for param in skip.parameters()} if skip is not None else set()
        named = [(name, param) for name, param in module.named_parameters()
                 if param.requires_grad and id(param) not in skipped]
        self.parameters = [param for _, param in named]
        self.optimizer = build_optimizer(named, weight_decay)
        self.schedule = schedule
        self.max_grad_norm = max_grad_norm
        self.before_step: list = []  # callables(module) run with the (unscaled) gradients (tests, diagnostics)
        self.module = module
        self.skipped_steps = 0  # steps whose gradients were not finite (the --on_nonfinite failure)
        self.scaler = grad_scaler(precision, module)
        self.scaler_skips = 0  # fp16: steps the loss scaler skipped for an overflow of the scaled gradients
        self._nonfinite_loss = False  # fp16: a loss given to backward() since the last step was NaN/inf

    def backward(self, tensor: torch.Tensor, grad: torch.Tensor | None = None) -> None:
        """tensor.backward(grad) (a loss when grad is None), scaled by the loss scaler if there is one;
        `grad` is cast to `tensor`'s dtype (an autocast forward's output may be bf16/fp16)."""
        if grad is not None:
            tensor.backward(self.scaled(grad.to(tensor.dtype)))
            return
        if self.scaler is not None:
            self._nonfinite_loss |= not bool(torch.isfinite(tensor.detach()))
        self.scaled(tensor).backward()

    def scaled(self, tensor: torch.Tensor) -> torch.Tensor:
        """A loss, or a gradient arriving for a backward into this Stepper's parameters, times the
        fp16 loss scale (unchanged without a scaler)."""
        return tensor if self.scaler is None else self.scaler.scale(tensor)

    def unscaled(self, grad: torch.Tensor) -> torch.Tensor:
        """A gradient computed by a `backward` of this Stepper (e.g. at the cut, for the peer), unscaled."""
        return grad if self.scaler is None else grad / self.scaler.get_scale()

    def step(self, global_step: int) -> bool:
        """Clip, then step at the schedule's rate; a non-finite gradient skips the step (so NaN or
        inf never reaches the weights) and returns False."""
        # fp16, once any gradient exists (the scaler has nothing to check, and refuses to step, without)
        scaled = self.scaler is not None and any(param.grad is not None for param in self.parameters)
        if scaled:
            self.scaler.unscale_(self.optimizer)
        for hook in self.before_step:
            hook(self.module)
        norm = torch.nn.utils.clip_grad_norm_(self.parameters, self.max_grad_norm or float("inf"))
        finite = bool(torch.isfinite(norm))
        set_learning_rate(self.optimizer, self.schedule(global_step), self.schedule.body_factor(global_step))
        if scaled:
            self._scaled_step(finite)
        elif finite:
            self.optimizer.step()
        else:
            self.skipped_steps += 1
        self.optimizer.zero_grad(set_to_none=True)
        return finite

    def _scaled_step(self, finite: bool) -> None:
        """fp16: the scaler steps (or skips, on the inf it found when unscaling) and updates its scale."""
        scale = self.scaler.get_scale()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if not finite:
            failed = self._nonfinite_loss or scale <= self.FP16_FAILURE_SCALE
            self.skipped_steps += failed
            self.scaler_skips += not failed
            logger.debug("fp16 loss scaler skipped a step at scale %g (%s); scale now %g", scale,
                         "a failure" if failed else "an overflow", self.scaler.get_scale())
        self._nonfinite_loss = False


class ClientTrainer(ABC):
    """Trains one logical client for one communication round. Created fresh for each (client, round)."""

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


class SplitServerTrainer(ServerTrainer):
    """What the split algorithms' servers share: the optimizer, the per-batch state awaiting a
    client's GRAD (keyed by client rank and step), and dispatch on the message kind."""

    def __init__(self, algorithm, model, channel, round_idx: int):
        config = algorithm.config
        self.model, self.channel, self.round_idx = model, channel, round_idx
        self.head_on_client = config.head_placement == "client"
        self.full_output = config.server_sends_full_output
        self.wire_dtype = config.wire_dtype
        self.precision = config.precision
        self.stepper = Stepper(model, algorithm.session.schedule, config.weight_decay, config.max_grad_norm,
                               precision=self.precision)
        self.awaiting_grad: dict[tuple[int, int], tuple] = {}  # (client rank, step) -> what the GRAD needs
        self._awaiting_samples: dict[tuple[int, int], int] = {}  # ... and that batch's sequences
        self._samples = 0  # sequences this replica stepped on: its FedAvg weight
        # What a server keeps for later GRADs is its largest memory: bounded per client process by the
        # protocol (a fedbiobert client settles the OUTPUT of batch b - max_inflight before it steps on
        # batch b; a fedbert client waits every step), and enforced here so a misbehaving peer cannot
        # grow it. peak_kept is reported per round (memory in metrics.jsonl).
        self.max_kept_per_client = self.kept_limit(config)
        self.peak_kept = 0

    @staticmethod
    def kept_limit(config) -> int:
        """Batches one client process may have awaiting their GRAD on this server at once."""
        return config.max_inflight + 1

    @property
    def samples_seen(self) -> int:
        return self._samples

    def handle(self, message) -> StepResult | None:
        key = (message.source, message.step)
        if message.kind is Kind.CONTROL and message.control is Control.ABANDON:
            # Paired with a client trainer's abandon(): its silo failed, this batch's GRAD never comes,
            # and the replica never steps on it, so it does not count towards the FedAvg weight.
            self.awaiting_grad.pop(key, None)
            self._awaiting_samples.pop(key, None)
            return None
        if message.kind is Kind.ACTIVATION:
            result = self.on_activation(message)
            if key in self.awaiting_grad:  # counted once its GRAD comes and the replica steps
                self._awaiting_samples[key] = message.tensors[0].shape[0]
            else:  # stepped already (head on the server)
                self._samples += message.tensors[0].shape[0]
            return result
        if message.kind is Kind.GRAD:
            self._samples += self._awaiting_samples.pop(key, 0)
            return self.on_grad(message)
        raise RuntimeError(f"server got an unexpected {message.kind.name} from rank {message.source}")

    def keep_for_grad(self, message, kept) -> None:
        """Keep what the GRAD of this batch will need (paired with on_grad's pop)."""
        from_source = sum(1 for source, _ in self.awaiting_grad if source == message.source)
        if from_source >= self.max_kept_per_client:
            raise RuntimeError(f"protocol error: rank {message.source} has {from_source} batches awaiting their GRAD "
                               f"on this server, the most allowed is {self.max_kept_per_client}")
        self.awaiting_grad[(message.source, message.step)] = kept
        self.peak_kept = max(self.peak_kept, len(self.awaiting_grad))

    def finish(self) -> None:
        if self.awaiting_grad:
            raise RuntimeError(f"round ended with {len(self.awaiting_grad)} batch(es) never answered by a GRAD: "
                               f"{sorted(self.awaiting_grad)[:4]}")

    @abstractmethod
    def on_activation(self, message) -> StepResult | None:
        ...

    @abstractmethod
    def on_grad(self, message) -> StepResult | None:
        ...


class Algorithm(ABC):
    name: str = ""
    server_takes_turns: bool = False  # True: a server serves its client processes one at a time

    def __init__(self, session):
        self.session = session
        self.config = session.config

    @abstractmethod
    def split(self, full_model) -> tuple[torch.nn.Module, torch.nn.Module | None]:
        """(client part, server part or None) of a freshly built full model."""

    @abstractmethod
    def federated_client_keys(self, client_model: torch.nn.Module) -> list[str]:
        """The client tensors FedAvg averages; the others stay private to each client."""

    @abstractmethod
    def client_trainer(self, model, channel, server_rank: int, client_id: int, round_idx: int) -> ClientTrainer:
        ...

    @abstractmethod
    def server_trainer(self, model, channel, round_idx: int) -> ServerTrainer:
        ...


def expect(message, kind, step: int, peer: int) -> None:
    """A blocking receive got what the protocol says comes next, or a clear error."""
    if message.kind is not kind or message.step != step:
        raise RuntimeError(f"protocol error: expected {kind.name} of step {step} from rank {peer}, "
                           f"got {message.kind.name} of step {message.step}")


def abandon_message(client_id: int, round_idx: int, step: int):
    """What a client sends instead of the GRAD of a batch it will never answer."""
    return Message(Kind.CONTROL, client_id=client_id, round=round_idx, step=step, control=Control.ABANDON)


def server_output(last_hidden: torch.Tensor, positions: torch.Tensor, full: bool) -> torch.Tensor:
    """Head on the client: what the server sends back, its last hidden states [B,T,H] (full, as
    FedBERT publishes it) or only their rows at the masked positions [M,H]."""
    return last_hidden if full else gather_masked(last_hidden, positions)


def rows_at_masked(received: torch.Tensor, positions: torch.Tensor, full: bool) -> torch.Tensor:
    """The client's side of `server_output`: the [M,H] rows its final head needs. With full output
    the gradient it returns is [B,T,H], zero away from the masked positions."""
    return gather_masked(received, positions) if full else received


def loss_value(loss: torch.Tensor) -> float:
    value = float(loss.detach())
    return value if math.isfinite(value) else math.nan

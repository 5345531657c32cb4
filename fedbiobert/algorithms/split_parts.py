"""What the split algorithms (fedbiobert, fedbert) share: the settings both ends of the cut read, the
client's ACTIVATION and its final-head round trip on the server's OUTPUT, the server trainer's
bookkeeping of batches awaiting a GRAD, and the protocol's small helpers."""
from __future__ import annotations

import math
from abc import abstractmethod

import torch

from fedbiobert.algorithms.base import ClientTrainer, ServerTrainer, Stepper, StepResult, loss_value
from fedbiobert.comm.messages import Control, Kind, Message
from fedbiobert.model.mlm import gather_masked, masked_positions, mlm_loss
from fedbiobert.precision import autocast
from fedbiobert.privacy.defence import Defence, defend

NO_SCALARS = (math.nan, math.nan)


class SplitEnd:
    """One end of the cut (a client or a server trainer) and what both ends read from the config."""

    def __init__(self, algorithm, model, channel, round_idx: int):
        config = algorithm.config
        self.model, self.channel, self.round_idx = model, channel, round_idx
        self.head_on_client = config.head_placement == "client"
        self.full_output = config.server_sends_full_output
        self.wire_dtype = config.wire_dtype
        self.precision = config.precision
        self.defence = Defence.from_config(config)  # --activation_clip/--activation_noise on what a client sends


class SplitClient(SplitEnd, ClientTrainer):
    """A split client: sends its ACTIVATIONs to its server and, with the head on the client, answers
    each OUTPUT with the GRAD of its final head's loss (`holding_output`: one received, not yet answered)."""

    def __init__(self, algorithm, model, channel, server_rank: int, silo_id: int, round_idx: int):
        super().__init__(algorithm, model, channel, round_idx)
        self.server_rank, self.silo_id = server_rank, silo_id
        self.holding_output = False

    def send(self, kind: Kind, step: int, tensors, scalars=NO_SCALARS) -> None:
        self.channel.send(Message(kind, silo_id=self.silo_id, round=self.round_idx, step=step,
                                  scalars=scalars, tensors=tensors), self.server_rank)

    def forward_and_send(self, batch, step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The client part's forward (under autocast) and its ACTIVATION, sent at once so that the server
        works on this batch meanwhile: [hidden at the cut (B,T,H) in the wire dtype, padding mask (B,T) u8,
        masked positions (M)], and with the head on the server the labels there (M): they leave the silo.
        Returns (hidden at the cut, masked positions, labels at them)."""
        positions = masked_positions(batch.labels)
        targets = batch.labels.reshape(-1)[positions]
        with autocast(self.precision, self.model):
            hidden = self.model(batch.input_ids, batch.attention_mask)
        sent = defend(hidden.detach(), self.defence)  # what leaves the silo; the local loss reads `hidden`
        tensors = [sent.to(self.wire_dtype), batch.attention_mask.to(torch.uint8), positions]
        if not self.head_on_client:
            tensors.append(targets)
        self.send(Kind.ACTIVATION, step, tensors)  # paired with SplitServerTrainer.handle (ACTIVATION)
        return hidden, positions, targets

    def final_head_round_trip(self, step: int, positions, targets, stepper: Stepper) -> float:
        """Take the server's OUTPUT of `step`, back-propagate the final head's loss on it into `stepper`'s
        parameters (not stepped here), answer with the GRAD w.r.t. the OUTPUT (its scalars carry the
        loss); returns the loss."""
        output = self.channel.recv(self.server_rank)  # paired with the server's OUTPUT send
        expect(output, Kind.OUTPUT, step, self.server_rank)
        self.holding_output = True
        server_hidden = output.tensors[0].float().requires_grad_()  # a leaf: its grad is fp32
        at_masked = rows_at_masked(server_hidden, positions, self.full_output)
        with autocast(self.precision, self.model):
            final_loss = mlm_loss(self.model.final_logits(at_masked), targets)
        stepper.backward(final_loss)
        value = loss_value(final_loss)
        # unscaled before any step updates an fp16 loss scale
        grad = stepper.unscaled(server_hidden.grad).to(self.wire_dtype)
        self.send(Kind.GRAD, step, [grad], (math.nan, value))  # paired with SplitServerTrainer.handle (GRAD)
        self.holding_output = False
        return value

    def abandon_output(self, step: int) -> None:
        """Answer the OUTPUT of `step` (taken first, unless held) with ABANDON instead of a GRAD; paired
        with SplitServerTrainer.handle (ABANDON): the server drops that batch's graph and sends nothing more."""
        if not self.holding_output:
            expect(self.channel.recv(self.server_rank), Kind.OUTPUT, step, self.server_rank)
        self.holding_output = False
        self.channel.send(abandon_message(self.silo_id, self.round_idx, step), self.server_rank)


class SplitServerTrainer(SplitEnd, ServerTrainer):
    """What the split algorithms' servers share: the optimizer, the per-batch state awaiting a
    client's GRAD (keyed by client rank and step), and dispatch on the message kind."""

    def __init__(self, algorithm, model, channel, round_idx: int):
        super().__init__(algorithm, model, channel, round_idx)
        self.stepper = algorithm.stepper(model)
        self.awaiting_grad: dict[tuple[int, int], tuple] = {}  # (client rank, step) -> what the GRAD needs
        self._awaiting_samples: dict[tuple[int, int], int] = {}  # ... and that batch's sequences
        self._samples = 0  # sequences this replica stepped on: its FedAvg weight
        # What a server keeps for later GRADs is its largest memory: bounded per client process by the
        # protocol (a fedbiobert client settles the OUTPUT of batch b - max_inflight before it steps on
        # batch b; a fedbert client waits every step), and enforced here so a misbehaving peer cannot
        # grow it. peak_kept is reported per round (memory in metrics.jsonl).
        self.max_kept_per_client = self.kept_limit(algorithm.config)
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

    def reply(self, message: Message, kind: Kind, tensors, scalars=NO_SCALARS) -> None:
        """Send `kind` about `message`'s batch back to the client process that sent it."""
        self.channel.send(Message(kind, silo_id=message.silo_id, round=self.round_idx, step=message.step,
                                  scalars=scalars, tensors=tensors), message.source)

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


def expect(message, kind, step: int, peer: int) -> None:
    """A blocking receive got what the protocol says comes next, or a clear error."""
    if message.kind is not kind or message.step != step:
        raise RuntimeError(f"protocol error: expected {kind.name} of step {step} from rank {peer}, "
                           f"got {message.kind.name} of step {message.step}")


def abandon_message(silo_id: int, round_idx: int, step: int):
    """What a client sends instead of the GRAD of a batch it will never answer."""
    return Message(Kind.CONTROL, silo_id=silo_id, round=round_idx, step=step, control=Control.ABANDON)


def server_output(last_hidden: torch.Tensor, positions: torch.Tensor, full: bool) -> torch.Tensor:
    """Head on the client: what the server sends back, its last hidden states [B,T,H] (full, as
    FedBERT publishes it) or only their rows at the masked positions [M,H]."""
    return last_hidden if full else gather_masked(last_hidden, positions)


def rows_at_masked(received: torch.Tensor, positions: torch.Tensor, full: bool) -> torch.Tensor:
    """The client's side of `server_output`: the [M,H] rows its final head needs. With full output
    the gradient it returns is [B,T,H], zero away from the masked positions."""
    return gather_masked(received, positions) if full else received

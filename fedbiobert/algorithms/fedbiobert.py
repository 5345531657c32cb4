"""FedBioBERT: split learning with a local auxiliary loss and an asynchronous server.

Client step (never waits for a gradient from the server):
    hidden = embeddings + first N layers (input_ids)
    send ACTIVATION(hidden at the cut, padding mask, masked positions[, labels at them])
    local loss = auxiliary MLM head(hidden at masked positions); backward; AdamW step
The client's embeddings and encoder layers are trained by the local loss alone. With the head on
the client, the final head has an optimizer of its own: one step (clipped on its own) per OUTPUT
settled, so it gets as many updates as the trunk and its gradient never enters the trunk's clipping.

Server (in arrival order, from any of its clients):
    ACTIVATION -> remaining layers -> hidden at masked positions
      head on the server: final MLM loss, backward, step (nothing is sent back)
      head on the client (default, U-shaped): send OUTPUT; the client computes the final loss with
      its own head (labels never leave the silo) and returns GRAD w.r.t. OUTPUT; the server then
      back-propagates it through the graph it kept (with the forward's weights stashed) and steps.
In client-head mode a client consumes the OUTPUT of batch b - max_inflight right before stepping
on batch b: it runs ahead of its server by at most `--max_inflight` batches, and the schedule is
deterministic (reproducible) whatever the timing.

Wire (send/receive pairs):
    client ACTIVATION  --> server recv(any)      [hidden (B,T,H), mask (B,T) u8, positions (M)(, labels (M))]
    server OUTPUT      --> client recv(server)   [hidden at masked positions (M,H)]       client-head only
    client GRAD        --> server recv(any)      [d final loss / d OUTPUT (M,H)]           client-head only
(--server_output full: OUTPUT and GRAD are (B,T,H), every position, as in fedbert's default.)
"""
from __future__ import annotations

import collections
from dataclasses import dataclass

import torch

from fedbiobert.algorithms.base import SplitAlgorithm, StepResult, loss_value
from fedbiobert.algorithms.split_parts import SplitClient, SplitServerTrainer, server_output
from fedbiobert.algorithms.stepper import Stepper
from fedbiobert.comm.messages import Kind, Message
from fedbiobert.model.mlm import gather_masked, mlm_loss
from fedbiobert.model.recompute import keep_forward
from fedbiobert.precision import autocast


@dataclass
class _AwaitedOutput:
    step: int
    targets: torch.Tensor
    positions: torch.Tensor


class FedBioBERTClient(SplitClient):
    def __init__(self, algorithm: "FedBioBERT", model, channel, server_rank: int, silo_id: int, round_idx: int):
        super().__init__(algorithm, model, channel, server_rank, silo_id, round_idx)
        self.max_inflight = algorithm.config.max_inflight
        final_head = model.final_head if self.head_on_client else None
        # The trunk (embeddings, client layers, auxiliary head) and the final head step apart: the
        # trunk on the auxiliary loss of batch b, the final head on the final loss of batch
        # b - max_inflight when its OUTPUT is settled, each with its own clipping (and fp16 loss scale).
        self.stepper = algorithm.stepper(model, skip=final_head)
        self.final_head_stepper = algorithm.stepper(final_head) if final_head is not None else None
        self.awaited: collections.deque[_AwaitedOutput] = collections.deque()
        self.last_step = -1

    def step(self, batch, global_step: int) -> StepResult:
        # Send first, so the server works on this batch while we compute the local loss.
        hidden, positions, targets = self.forward_and_send(batch, global_step)
        if self.head_on_client:
            self.awaited.append(_AwaitedOutput(global_step, targets, positions))
        with autocast(self.precision, self.model):
            local_loss = mlm_loss(self.model.aux_logits(gather_masked(hidden, positions)), targets)
        self.stepper.backward(local_loss)
        global_losses = self._settle_outputs(keep=self.max_inflight) if self.head_on_client else []
        if not self.head_on_client:
            self.channel.flush(max_pending=self.max_inflight)  # bound memory held by unsent activations
        self.stepper.step(global_step)
        self.last_step = global_step
        return StepResult(local_loss=loss_value(local_loss), global_loss=_mean_or_none(global_losses),
                          tokens=int(batch.attention_mask.sum()), step=global_step, silo_id=self.silo_id)

    @property
    def steppers(self) -> list[Stepper]:
        return [self.stepper] + ([self.final_head_stepper] if self.final_head_stepper is not None else [])

    def finish(self) -> list[StepResult]:
        """Head on the client: settle every OUTPUT still awaited (this silo's head steps on each
        before its weights are averaged). Head on the server: nothing to wait for; the activations
        still in flight are delivered while the next silo trains (the process flushes before it
        says ROUND_DONE), so there is no pipeline bubble between silos."""
        losses = self._settle_outputs(keep=0) if self.head_on_client else []
        return [StepResult(global_loss=loss, step=self.last_step, silo_id=self.silo_id) for loss in losses]

    def abandon(self) -> None:
        """Take every OUTPUT still owed to this silo and answer each with ABANDON instead of a GRAD."""
        for awaited in self.awaited:
            self.abandon_output(awaited.step)
        self.awaited.clear()

    def _settle_outputs(self, keep: int) -> list[float]:
        """Consume OUTPUTs (oldest first) until at most `keep` are awaited; return their final losses."""
        losses = []
        while len(self.awaited) > keep:
            awaited = self.awaited[0]  # popped once answered: abandon() must know what is still open
            losses.append(self.final_head_round_trip(awaited.step, awaited.positions, awaited.targets,
                                                     self.final_head_stepper))
            self.final_head_stepper.step(awaited.step)  # the final head only: the trunk has no grad here
            self.awaited.popleft()
        return losses


class FedBioBERTServer(SplitServerTrainer):
    """In client-head mode `awaiting_grad` holds, per batch, a KeptGraph or RecomputedForward
    (model/recompute.py) and its token count, until the client's GRAD comes."""

    def __init__(self, algorithm, model, channel, round_idx: int):
        super().__init__(algorithm, model, channel, round_idx)
        self.recompute = algorithm.config.server_recompute

    def on_activation(self, message: Message) -> StepResult | None:
        hidden, mask, positions = message.tensors[:3]
        if self.head_on_client:
            return self._forward_for_client_head(message, hidden, mask, positions)
        with autocast(self.precision, self.model):
            output = gather_masked(self.model(hidden.float(), mask.long()), positions)
            final_loss = mlm_loss(self.model.final_logits(output), message.tensors[3])
        self.stepper.backward(final_loss)
        self.stepper.step(message.step)
        return StepResult(global_loss=loss_value(final_loss), tokens=int(mask.sum()), step=message.step,
                          silo_id=message.silo_id)

    def _forward_for_client_head(self, message: Message, hidden, mask, positions) -> None:
        """Forward, keep what the backward needs, send OUTPUT; backward when the GRAD comes.

        By then the server has stepped on other batches. What is kept (model/recompute.py) is the
        graph with this forward's weights stashed, or with --server_recompute the inputs, RNG state
        and weights to run the forward again: either way the backward uses this forward's weights.
        The forward (and a recomputation) runs under autocast: its matmuls save bf16/fp16 casts of the
        weights, copies made at this forward (stashing copies what does share the parameters'
        storage, e.g. LayerNorm weights); the context closes within `compute`, before any step, so no
        cached cast outlives the forward.
        """
        def compute(call):
            with autocast(self.precision, self.model):
                return server_output(call(hidden.float(), mask.long()), positions, self.full_output)

        kept = keep_forward(self.model, compute, self.recompute)
        self.keep_for_grad(message, (kept, int(mask.sum())))
        # paired with SplitClient.final_head_round_trip
        self.reply(message, Kind.OUTPUT, [kept.output.detach().to(self.wire_dtype)])
        return None

    def on_grad(self, message: Message) -> StepResult:
        kept, tokens = self.awaiting_grad.pop((message.source, message.step))
        kept.backward(self.stepper.scaled(message.tensors[0].float()))  # fp16: times the loss scale
        self.stepper.step(message.step)
        return StepResult(global_loss=message.scalars[1], tokens=tokens, step=message.step,
                          silo_id=message.silo_id)


class FedBioBERT(SplitAlgorithm):
    name = "fedbiobert"
    summary = "local loss, async server"
    min_client_layers = 1
    min_client_layers_why = "the auxiliary loss trains client encoder layers"
    supports_server_recompute = True  # the only server that keeps graphs across steps
    trains_aux_head = True

    def client_trainer(self, model, channel, server_rank, silo_id, round_idx) -> FedBioBERTClient:
        return FedBioBERTClient(self, model, channel, server_rank, silo_id, round_idx)

    def server_trainer(self, model, channel, round_idx) -> FedBioBERTServer:
        return FedBioBERTServer(self, model, channel, round_idx)


def _mean_or_none(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None

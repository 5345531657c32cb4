"""FedBERT (Tian et al. 2022): split learning WITH back-propagation from server to client.

Every client step blocks on the server: the server returns the gradient at the cut and the client
back-propagates it through its own layers. `--num_client_encoder 0` is the original FedBERT
(embeddings and MLM head on the client, every encoder layer on the server: four activation-sized
transfers per step with the head on the client); any other cut is the same-cut comparison.

Wire (send/receive pairs), head on the client:
    client ACTIVATION --> server        [hidden (B,T,H), mask (B,T) u8, masked positions (M)]
    server OUTPUT     --> client        [server's last hidden states (B,T,H); --server_output masked: (M,H)]
    client GRAD       --> server        [d loss / d OUTPUT, the OUTPUT's shape]
    server GRAD       --> client        [d loss / d ACTIVATION (B,T,H)]
By default (--server_output auto) OUTPUT and GRAD cover every position, as the paper's client runs
the MLM head on the server's full output: four activation-sized transfers per step. The client's
head still computes logits at the masked positions only (the loss is the same).
Head on the server: ACTIVATION carries the labels at masked positions too, and the server answers
with the GRAD at the cut directly (its scalars carry the loss).

The server keeps each batch's graph until the client's GRAD comes back. That is valid because a
server replica serves one client process at a time: one replica per client process
(`--server_schedule parallel`) or one replica that client processes take turns with (`sequential`);
`auto` (the default) picks parallel when the world has a server per client process.
"""
from __future__ import annotations

import math

import torch

from fedbiobert.algorithms.base import (Algorithm, ClientTrainer, SplitServerTrainer, Stepper, StepResult,
                                        abandon_message, expect, loss_value, rows_at_masked, server_output)
from fedbiobert.config import server_schedule_for
from fedbiobert.comm.messages import Kind, Message
from fedbiobert.model import client_state_keys, gather_masked, masked_positions, mlm_loss, split_model
from fedbiobert.precision import autocast


class FedBERTClient(ClientTrainer):
    def __init__(self, algorithm, model, channel, server_rank: int, client_id: int, round_idx: int):
        config = algorithm.config
        self.model, self.channel, self.server_rank = model, channel, server_rank
        self.client_id, self.round_idx = client_id, round_idx
        self.head_on_client = config.head_placement == "client"
        self.full_output = config.server_sends_full_output
        self.wire_dtype = config.wire_dtype
        self.precision = config.precision
        self.stepper = Stepper(model, algorithm.session.schedule, config.weight_decay, config.max_grad_norm,
                               precision=self.precision)
        # The exchange of the current step still open with the server, for abandon():
        # (step, what comes next: "output" to receive, "answer" to send, "grad" to receive) or None.
        self.open_exchange: tuple[int, str] | None = None

    def step(self, batch, global_step: int) -> StepResult:
        positions = masked_positions(batch.labels)
        targets = batch.labels.reshape(-1)[positions]
        with autocast(self.precision, self.model):
            hidden = self.model(batch.input_ids, batch.attention_mask)
        tensors = [hidden.detach().to(self.wire_dtype), batch.attention_mask.to(torch.uint8), positions]
        if not self.head_on_client:
            tensors.append(targets)
        self._send(Kind.ACTIVATION, global_step, tensors)  # paired with FedBERTServer._on_activation
        self.open_exchange = (global_step, "output" if self.head_on_client else "grad")
        global_loss = self._final_head_round_trip(global_step, targets, positions) if self.head_on_client else None
        reply = self.channel.recv(self.server_rank)  # blocks: the GRAD at the cut
        expect(reply, Kind.GRAD, global_step, self.server_rank)
        self.open_exchange = None
        # The same fp16 loss scale as the final head's backward above: one step unscales both.
        self.stepper.backward(hidden, reply.tensors[0])  # cast to hidden's dtype (bf16 under autocast)
        self.stepper.step(global_step)
        return StepResult(global_loss=global_loss, tokens=int(batch.attention_mask.sum()), step=global_step,
                          client_id=self.client_id)

    def finish(self) -> list[StepResult]:
        self.channel.flush()
        return []

    def abandon(self) -> None:
        """Close the current step's exchange: take an owed OUTPUT and answer it with ABANDON (the
        server then sends nothing more for that step), or take the owed GRAD at the cut."""
        if self.open_exchange is None:
            return
        step, next_part = self.open_exchange
        if next_part == "output":
            expect(self.channel.recv(self.server_rank), Kind.OUTPUT, step, self.server_rank)
            next_part = "answer"
        if next_part == "answer":
            # paired with SplitServerTrainer.handle (ABANDON): the server drops the graph, no reply
            self.channel.send(abandon_message(self.client_id, self.round_idx, step), self.server_rank)
        else:
            expect(self.channel.recv(self.server_rank), Kind.GRAD, step, self.server_rank)
        self.open_exchange = None
        self.channel.flush()

    def _final_head_round_trip(self, global_step: int, targets, positions) -> float:
        output = self.channel.recv(self.server_rank)  # paired with the server's OUTPUT send
        expect(output, Kind.OUTPUT, global_step, self.server_rank)
        self.open_exchange = (global_step, "answer")
        server_hidden = output.tensors[0].float().requires_grad_()  # a leaf: its grad is fp32
        at_masked = rows_at_masked(server_hidden, positions, self.full_output)
        with autocast(self.precision, self.model):
            final_loss = mlm_loss(self.model.final_logits(at_masked), targets)
        self.stepper.backward(final_loss)
        value = loss_value(final_loss)
        grad = self.stepper.unscaled(server_hidden.grad)
        self._send(Kind.GRAD, global_step, [grad.to(self.wire_dtype)], (math.nan, value))
        self.open_exchange = (global_step, "grad")
        return value

    def _send(self, kind: Kind, step: int, tensors, scalars=(math.nan, math.nan)) -> None:
        self.channel.send(Message(kind, client_id=self.client_id, round=self.round_idx, step=step,
                                  scalars=scalars, tensors=tensors), self.server_rank)


class FedBERTServer(SplitServerTrainer):
    """Keeps each batch's graph (cut input, output) in `awaiting_grad` until the client's GRAD: one
    at a time per client process, which waits for the GRAD at the cut before its next step (so no
    stashing and nothing to recompute: the replica does not step between the forward and backward)."""

    @staticmethod
    def kept_limit(config) -> int:
        return 1

    def on_activation(self, message: Message) -> StepResult | None:
        hidden, mask, positions = message.tensors[:3]
        cut_input = hidden.float().requires_grad_()  # a leaf: the GRAD at the cut is fp32
        with autocast(self.precision, self.model):
            last_hidden = self.model(cut_input, mask.long())
        if self.head_on_client:
            output = server_output(last_hidden, positions, self.full_output)
            self.keep_for_grad(message, (cut_input, output))
            self._reply(message, Kind.OUTPUT, [output.detach().to(self.wire_dtype)])
            return None
        with autocast(self.precision, self.model):
            final_loss = mlm_loss(self.model.final_logits(gather_masked(last_hidden, positions)), message.tensors[3])
        self.stepper.backward(final_loss)
        value = loss_value(final_loss)
        self._reply(message, Kind.GRAD, [self._cut_grad(cut_input)], (math.nan, value))
        self.stepper.step(message.step)
        return StepResult(global_loss=value, tokens=int(mask.sum()), step=message.step, client_id=message.client_id)

    def on_grad(self, message: Message) -> StepResult:
        cut_input, output = self.awaiting_grad.pop((message.source, message.step))
        self.stepper.backward(output, message.tensors[0])  # cast to the output's dtype (bf16 under autocast)
        self._reply(message, Kind.GRAD, [self._cut_grad(cut_input)])  # paired with FedBERTClient.step
        self.stepper.step(message.step)
        return StepResult(global_loss=message.scalars[1], step=message.step, client_id=message.client_id)

    def _cut_grad(self, cut_input) -> torch.Tensor:
        """The gradient at the cut for the client, unscaled (fp16) before the step updates the scale."""
        return self.stepper.unscaled(cut_input.grad).to(self.wire_dtype)

    def _reply(self, message: Message, kind: Kind, tensors, scalars=(math.nan, math.nan)) -> None:
        self.channel.send(Message(kind, client_id=message.client_id, round=self.round_idx, step=message.step,
                                  scalars=scalars, tensors=tensors), message.source)


class FedBERT(Algorithm):
    name = "fedbert"

    @property
    def server_takes_turns(self) -> bool:
        return server_schedule_for(self.config, self.session.launch.world_size) == "sequential"

    def split(self, full_model):
        return split_model(full_model, self.config.num_client_encoder, self.config.head_placement)

    def federated_client_keys(self, client_model) -> list[str]:
        # No local loss here: the auxiliary head is never trained, so it is never exchanged either.
        keys = client_state_keys(client_model, self.config.fedavg_embedding_head)
        return [key for key in keys if not key.startswith("aux_head.")]

    def client_trainer(self, model, channel, server_rank, client_id, round_idx) -> FedBERTClient:
        return FedBERTClient(self, model, channel, server_rank, client_id, round_idx)

    def server_trainer(self, model, channel, round_idx) -> FedBERTServer:
        return FedBERTServer(self, model, channel, round_idx)

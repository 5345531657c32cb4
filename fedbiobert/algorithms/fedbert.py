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

import dataclasses
import math

import torch

from fedbiobert.algorithms.base import SplitAlgorithm, StepResult, loss_value
from fedbiobert.algorithms.split_parts import SplitClient, SplitServerTrainer, expect, server_output
from fedbiobert.config import ConfigError, server_schedule_for
from fedbiobert.comm.messages import Kind, Message
from fedbiobert.model.mlm import gather_masked, mlm_loss
from fedbiobert.precision import autocast


class FedBERTClient(SplitClient):
    def __init__(self, algorithm, model, channel, server_rank: int, silo_id: int, round_idx: int):
        super().__init__(algorithm, model, channel, server_rank, silo_id, round_idx)
        self.stepper = algorithm.stepper(model)
        # The exchange of the current step still open with the server, for abandon(): (step, what comes
        # next: "output" to receive and answer, "grad" to receive) or None. Between taking the OUTPUT and
        # answering it, `holding_output` is True.
        self.open_exchange: tuple[int, str] | None = None

    def step(self, batch, global_step: int) -> StepResult:
        hidden, positions, targets = self.forward_and_send(batch, global_step)
        self.open_exchange = (global_step, "output" if self.head_on_client else "grad")
        global_loss = None
        if self.head_on_client:
            # The same fp16 loss scale as the cut's backward below: one step unscales both.
            global_loss = self.final_head_round_trip(global_step, positions, targets, self.stepper)
            self.open_exchange = (global_step, "grad")
        reply = self.channel.recv(self.server_rank)  # blocks: the GRAD at the cut
        expect(reply, Kind.GRAD, global_step, self.server_rank)
        self.open_exchange = None
        if hidden.requires_grad:  # cast to hidden's dtype (bf16 under autocast)
            self.stepper.backward(hidden, reply.tensors[0])
        # else: --lora_rank with nothing trainable below the cut (0 client layers, frozen embeddings): the
        # GRAD has nowhere to go. It is still sent and taken, so the protocol and its bytes stay FedBERT's.
        self.stepper.step(global_step)
        return StepResult(global_loss=global_loss, tokens=int(batch.attention_mask.sum()), step=global_step,
                          silo_id=self.silo_id)

    def finish(self) -> list[StepResult]:
        self.channel.flush()
        return []

    def abandon(self) -> None:
        """Close the current step's exchange: answer an owed (or held) OUTPUT with ABANDON (the server
        then sends nothing more for that step), or take the owed GRAD at the cut."""
        if self.open_exchange is None:
            return
        step, next_part = self.open_exchange
        if next_part == "output":
            self.abandon_output(step)
        else:
            expect(self.channel.recv(self.server_rank), Kind.GRAD, step, self.server_rank)
        self.open_exchange = None
        self.channel.flush()


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
            self.reply(message, Kind.OUTPUT, [output.detach().to(self.wire_dtype)])
            return None
        with autocast(self.precision, self.model):
            final_loss = mlm_loss(self.model.final_logits(gather_masked(last_hidden, positions)), message.tensors[3])
        self.stepper.backward(final_loss)
        value = loss_value(final_loss)
        self.reply(message, Kind.GRAD, [self._cut_grad(cut_input)], (math.nan, value))
        self.stepper.step(message.step)
        return StepResult(global_loss=value, tokens=int(mask.sum()), step=message.step, silo_id=message.silo_id)

    def on_grad(self, message: Message) -> StepResult:
        cut_input, output = self.awaiting_grad.pop((message.source, message.step))
        self.stepper.backward(output, message.tensors[0])  # cast to the output's dtype (bf16 under autocast)
        self.reply(message, Kind.GRAD, [self._cut_grad(cut_input)])  # paired with FedBERTClient.step
        self.stepper.step(message.step)
        return StepResult(global_loss=message.scalars[1], step=message.step, silo_id=message.silo_id)

    def _cut_grad(self, cut_input) -> torch.Tensor:
        """The gradient at the cut for the client, unscaled (fp16) before the step updates the scale."""
        return self.stepper.unscaled(cut_input.grad).to(self.wire_dtype)


class FedBERT(SplitAlgorithm):
    name = "fedbert"
    summary = "split learning that waits for the server's gradient every step"
    full_server_output = True  # the paper's client runs its head on the server's full output

    @classmethod
    def check_world(cls, config, world_size: int) -> None:
        """The schedule needs its servers: one per client process (parallel) or one shared (sequential)."""
        servers = config.num_servers
        num_client_processes = world_size - servers
        schedule = server_schedule_for(config, world_size)
        if schedule == "parallel" and num_client_processes != servers:
            raise ConfigError(
                f"fedbert with --server_schedule parallel needs one server replica per client process: "
                f"--num_device {servers} but {num_client_processes} client processes (world size {world_size}; "
                f"launch {2 * servers} processes, or use --server_schedule sequential with --num_device 1)")
        if schedule == "sequential" and servers != 1:
            raise ConfigError(f"fedbert with --server_schedule sequential has one shared server: "
                              f"--num_device {servers} must be 1" + (
                                  f" (or launch {2 * servers} processes for one server per client process)"
                                  if config.server_schedule == "auto" else ""))

    @classmethod
    def resolve_for_world(cls, config, world_size: int):
        """--server_schedule auto made concrete for this world."""
        return dataclasses.replace(config, server_schedule=server_schedule_for(config, world_size))

    @property
    def server_takes_turns(self) -> bool:
        return server_schedule_for(self.config, self.session.launch.world_size) == "sequential"

    def client_trainer(self, model, channel, server_rank, silo_id, round_idx) -> FedBERTClient:
        return FedBERTClient(self, model, channel, server_rank, silo_id, round_idx)

    def server_trainer(self, model, channel, round_idx) -> FedBERTServer:
        return FedBERTServer(self, model, channel, round_idx)

"""The server-process loop: train the server replica on client messages in arrival order.

Per round: take messages from any of this server's client processes and hand them to the
algorithm's ServerTrainer until every one of them has sent ROUND_DONE. A client may already be
sending the next round's activations while another is still finishing this round; such messages
wait in a backlog for the next round. Then FedAvg of the replicas across server processes.
"""
from __future__ import annotations

import logging
import time

from fedbiobert.aggregate import WeightedSum
from fedbiobert.messages import Control, Kind
from fedbiobert.metrics import EventLog
from fedbiobert.comm import link_channel
from fedbiobert.roles.base import RoleProcess
from fedbiobert.roles.round_end import RoundPiece, cpu_state
from fedbiobert.seeding import seed_torch

logger = logging.getLogger(__name__)


class ServerProcess(RoleProcess):
    role_name = "server"

    def __init__(self, session, algorithm):
        super().__init__(session)
        self.algorithm = algorithm
        _, self.model = algorithm.split(session.build_full_model())
        self.model.to(session.device)
        self.client_ranks = session.topology.client_ranks_of(self.rank)
        self.channel = link_channel(session, self.rank)
        self.events = EventLog(self.rank, "server", session.start_time)
        self.backlog = []  # messages of a later round that arrived early
        self.tokens_seen = 0
        self.started = time.time()
        self._apply_resume(session.resume)

    def train_round(self, round_idx: int) -> None:
        samples = self._train_replica(round_idx)
        self.average_replicas(samples)

    def _train_replica(self, round_idx: int) -> int:
        seed_torch(self.config.manual_seed, "server-dropout", round_idx, self.rank)
        self.model.train()
        trainer = self.algorithm.server_trainer(self.model, self.channel, round_idx)
        if self.algorithm.server_takes_turns:  # one client process at a time, in rank order
            for client_rank in self.client_ranks:
                self._serve(trainer, round_idx, {client_rank}, source=client_rank)
        else:  # every client process at once, in arrival order
            self._serve(trainer, round_idx, set(self.client_ranks), source=None)
        trainer.finish()
        self.channel.flush()
        if trainer.stepper.skipped_steps:
            logger.warning("server rank %d round %d: skipped %d step(s) with NaN/inf gradients", self.rank,
                           round_idx + 1, trainer.stepper.skipped_steps)
        return trainer.samples_seen

    def _serve(self, trainer, round_idx: int, still_sending: set[int], source: int | None) -> None:
        """Hand messages to the trainer until every client in `still_sending` said ROUND_DONE."""
        while still_sending:
            message = self._next_message(round_idx, source)
            if message.kind is Kind.CONTROL and message.control is Control.ROUND_DONE:
                still_sending.discard(message.source)  # paired with ClientProcess.train_round's send
                continue
            result = trainer.handle(message)
            if result is not None:
                self._record(result, round_idx)

    def _next_message(self, round_idx: int, source: int | None):
        """The next message of this round from `source` (None: any client process): from the
        backlog first, else whatever arrives next."""
        for index, message in enumerate(self.backlog):
            if message.round == round_idx and source in (None, message.source):
                return self.backlog.pop(index)
        while True:
            message = self.channel.recv(source)
            if message.round == round_idx:
                return message
            self.backlog.append(message)

    def average_replicas(self, samples: int) -> None:
        """FedAvg of the server replicas (every server process calls this), weighted by samples seen."""
        if not self.config.fedavg_server_model:
            return
        weight = float(samples) if self.config.aggregate_weighting == "samples" else float(samples > 0)
        weighted_sum = WeightedSum(self.model.state_dict())
        weighted_sum.add(self.model.state_dict(), weight)
        averaged = weighted_sum.reduce(self.session.collectives.sum_servers)
        if averaged is not None:
            self.model.load_state_dict(averaged, strict=False)

    def round_piece(self) -> RoundPiece:
        keep_replica = self.rank == 0 or not self.config.fedavg_server_model
        return RoundPiece(rank=self.rank, role="server", events=self.events.drain(),
                          server_state=cpu_state(self.model.state_dict()) if keep_replica else None)

    def _apply_resume(self, resume: dict | None) -> None:
        if resume is None:
            return
        states = resume["server_states"]
        self.model.load_state_dict(states.get(self.rank, states[0]))

    def _record(self, result, round_idx: int) -> None:
        self.tokens_seen += result.tokens
        self.events.record("step", round=round_idx + 1, step=result.step, client_id=result.client_id,
                           global_loss=result.global_loss, tokens=result.tokens,
                           bytes_sent=self.byte_counter.total("sent"),
                           bytes_received=self.byte_counter.total("received"))
        if self.writer is not None:
            elapsed = max(1e-9, time.time() - self.started)
            step_in_round = result.step - round_idx * self.config.steps_per_round
            self.writer.progress.step(round_idx, step_in_round, result.global_loss, self.tokens_seen / elapsed,
                                      result.client_id)

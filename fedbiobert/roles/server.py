"""The server-process loop: train the server replica on client messages in arrival order.

Per round: take messages from any of this server's client processes and hand them to the
algorithm's ServerTrainer until every one of them has sent ROUND_DONE, then FedAvg of the replicas
across server processes. (No message of the next round can arrive early: a client process starts
the next round only after the round-end gather, which this server joins after this loop.)

A server that takes turns (fedbert --server_schedule sequential) serves its client processes one
at a time. A process waiting for its turn is not waiting on a dead peer, so that wait must not be
bounded by --comm_timeout as one exchange is. Pairing, per round:

    server                                   client process p (in rank order)
    TURN      --> p                          wait_for(TURN)   (WAITING messages keep it waiting)
    serve p until its ROUND_DONE    <--      train its silos, ROUND_DONE
    WAITING   --> the processes whose turn is still to come, at most every --comm_timeout / 4 s

A process whose turn is over waits for the others at the round-end barrier, which every schedule
shares (Collectives.round_barrier, bounded by --round_timeout).
"""
from __future__ import annotations

import logging
import time

from fedbiobert.aggregate import WeightedSum
from fedbiobert.lora import trainable_keys
from fedbiobert.comm.messages import Control, Kind, Message
from fedbiobert.metrics import EventLog
from fedbiobert.roles.base import RoleProcess
from fedbiobert.roles.round_end import RoundPiece, cpu_state
from fedbiobert.seeding import seed_torch
from fedbiobert.server_optimizer import ServerOptimizer, ServerOptimizerSettings

logger = logging.getLogger(__name__)


class ServerProcess(RoleProcess):
    role_name = "server"

    def __init__(self, session, algorithm):
        super().__init__(session)
        self.algorithm = algorithm
        _, self.model = algorithm.split(session.build_full_model())
        self.model.to(session.device)
        self.client_ranks = session.topology.client_ranks_of(self.rank)
        self.channel = session.server_channel(self.rank)
        self.events = EventLog(self.rank, "server", session.start_time)
        self.keepalive_every = self.config.comm_timeout / 4
        self.tokens_seen = 0
        self.peak_kept = 0  # batches awaiting a GRAD at most, last round
        self.started = time.time()
        self.fedopt = ServerOptimizer(ServerOptimizerSettings.from_config(self.config))  # over replicas
        self.optimizer_state: dict | None = None  # --keep_server_optimizer: this replica's AdamW, round to round
        self._apply_resume(session.resume)

    def train_round(self, round_idx: int) -> None:
        # FedOpt over replicas needs the round-start weights (identical on every server): one CPU copy
        round_start = cpu_state(self.model.state_dict()) if self._replicas_use_fedopt() else None
        samples = self._train_replica(round_idx)
        self.meet_at_round_end()  # paired with every rank's call
        self.average_replicas(samples, round_start)

    def _replicas_use_fedopt(self) -> bool:
        return (self.config.fedavg_server_model and self.session.topology.num_servers > 1
                and self.fedopt.settings.kind != "fedavg")

    def _train_replica(self, round_idx: int) -> int:
        seed_torch(self.config.manual_seed, "server-dropout", round_idx, self.rank)
        self.model.train()
        trainer = self.algorithm.server_trainer(self.model, self.channel, round_idx)
        if self.optimizer_state is not None:  # --keep_server_optimizer: this replica's moments go on
            trainer.stepper.load_optimizer_state(self.optimizer_state)
        if self.algorithm.server_takes_turns:  # one client process at a time, in rank order
            self._serve_in_turns(trainer, round_idx)
        else:  # every client process at once, in arrival order
            self._serve(trainer, round_idx, set(self.client_ranks), source=None)
        trainer.finish()
        self.channel.flush()
        if self.config.keep_server_optimizer:
            self.optimizer_state = trainer.stepper.optimizer_state()
        self.peak_kept = getattr(trainer, "peak_kept", 0)
        if trainer.stepper.skipped_steps:
            logger.warning("server rank %d round %d: skipped %d step(s) with NaN/inf gradients", self.rank,
                           round_idx + 1, trainer.stepper.skipped_steps)
        return trainer.samples_seen

    def _serve(self, trainer, round_idx: int, still_sending: set[int], source: int | None,
               waiting: tuple[int, ...] = ()) -> None:
        """Hand messages to the trainer until every client in `still_sending` said ROUND_DONE;
        processes in `waiting` (their turn is still to come) hear WAITING now and then."""
        last_keepalive = time.monotonic()
        while still_sending:
            message = self.channel.recv(source)
            if "start" not in self.clock.parts:  # the pipeline's fill: the round's first message is here
                self.clock.add("start", self.clock.started)
            if message.kind is Kind.CONTROL and message.control is Control.ROUND_DONE:
                still_sending.discard(message.source)  # paired with ClientProcess.train_round's send
                continue
            result = trainer.handle(message)
            if result is not None:
                self._record(result, round_idx)
            if waiting and time.monotonic() - last_keepalive > self.keepalive_every:
                self._tell(waiting, Control.WAITING, round_idx)
                last_keepalive = time.monotonic()

    def _serve_in_turns(self, trainer, round_idx: int) -> None:
        for turn, client_rank in enumerate(self.client_ranks):
            self._tell([client_rank], Control.TURN, round_idx)  # paired with ClientProcess._wait_for_turn
            later = tuple(self.client_ranks[turn + 1:])
            self._serve(trainer, round_idx, {client_rank}, source=client_rank, waiting=later)

    def _tell(self, client_ranks, control: Control, round_idx: int) -> None:
        for client_rank in client_ranks:
            self.channel.send(Message(Kind.CONTROL, round=round_idx, control=control), client_rank)

    def average_replicas(self, samples: int, round_start: dict | None = None) -> None:
        """FedAvg of the server replicas (every server process calls this), weighted by samples seen;
        with a server optimiser, its step from `round_start` towards the average (identical on every
        server: same inputs). Each replica's AdamW moments stay its own: they are not averaged."""
        if not self.config.fedavg_server_model:
            return
        weight = float(samples) if self.config.aggregate_weighting == "samples" else float(samples > 0)
        # With LoRA only what trains: averaging the frozen base would only add rounding to it
        keys = trainable_keys(self.model) if self.config.lora is not None else None
        weighted_sum = WeightedSum(self.model.state_dict(), keys)
        weighted_sum.add(self.model.state_dict(), weight)
        averaged = weighted_sum.reduce(self.session.collectives.sum_servers)
        if averaged is not None and round_start is not None:
            averaged = self.fedopt.step(round_start, averaged)
        if averaged is not None:
            self.model.load_state_dict(averaged, strict=False)

    def memory_report(self) -> dict[str, float]:
        return {**super().memory_report(), "kept_for_grad_peak": self.peak_kept}

    def round_piece(self) -> RoundPiece:
        keep_replica = self.rank == 0 or not self.config.fedavg_server_model
        return RoundPiece(rank=self.rank, role="server", events=self.events.drain(),
                          server_state=cpu_state(self.model.state_dict()) if keep_replica else None,
                          fedopt_state=self.fedopt.state_dict() if self.rank == 0 else None,
                          optimizer_state=self.optimizer_state)

    def _apply_resume(self, resume: dict | None) -> None:
        if resume is None:
            return
        states = resume["server_states"]
        self.model.load_state_dict(states.get(self.rank, states[0]))
        if resume.get("server_fedopt") is not None:  # older checkpoints: fresh optimiser state
            self.fedopt.load_state_dict(resume["server_fedopt"])
        if self.config.keep_server_optimizer:
            self.optimizer_state = resume.get("server_optimizers", {}).get(self.rank)

    def _record(self, result, round_idx: int) -> None:
        self.tokens_seen += result.tokens
        self.events.record("step", round=round_idx + 1, step=result.step, silo_id=result.silo_id,
                           global_loss=result.global_loss, tokens=result.tokens,
                           bytes_sent=self.byte_counter.total("sent"),
                           bytes_received=self.byte_counter.total("received"))
        if self.writer is not None:
            elapsed = max(1e-9, time.time() - self.started)
            step_in_round = result.step - round_idx * self.config.steps_per_round
            self.writer.progress.step(round_idx, step_in_round, result.global_loss, self.tokens_seen / elapsed,
                                      result.silo_id)

"""The client-process loop: train this process's sampled silos in turn, then FedAvg the client parts.

One client process hosts several silos when n_clients exceeds the client
processes. Per round, for each sampled silo hosted here: load the global client part (and the
silo's private tensors, if embeddings/heads are not averaged), train it for
n_local_rounds x num_batch steps through the algorithm's ClientTrainer, and add its weights to a
running weighted sum. Then tell the server the round is done and average across client processes.
"""
from __future__ import annotations

import logging
import time

import torch

from fedbiobert.aggregate import WeightedSum, averaged_keys
from fedbiobert.checkpoint import resume_state_path
from fedbiobert.comm.errors import PeerError
from fedbiobert.comm.wan import WanModel
from fedbiobert.data import BatchLoader
from fedbiobert.comm.messages import Control, Kind, Message
from fedbiobert.metrics import EventLog
from fedbiobert.model import load_unique_state, unique_state
from fedbiobert.roles.base import NonFiniteError, RoleProcess
from fedbiobert.lora import trainable_keys
from fedbiobert.roles.exchange import ModelExchange, ResidualFiles
from fedbiobert.roles.round_end import RoundPiece, cpu_state
from fedbiobert.seeding import derive_seed, seed_torch
from fedbiobert.server_optimizer import ServerOptimizer, ServerOptimizerSettings

logger = logging.getLogger(__name__)


class SiloTimeout(RuntimeError):
    """A silo was still training at --silo_timeout."""


class InjectedFault(RuntimeError):
    """--inject_fault CLIENT:ROUND:error (chaos testing)."""


def _inject_fault(kind: str, silo_timeout: float | None) -> None:
    if kind == "error":
        raise InjectedFault("injected by --inject_fault")
    time.sleep(silo_timeout)  # "stall": the deadline check right after this fires


class ClientProcess(RoleProcess):
    role_name = "client"

    def __init__(self, session, algorithm):
        super().__init__(session)
        self.topology = session.topology
        self.algorithm = algorithm
        self.model, _ = algorithm.split(session.build_full_model())
        self.model.to(session.device)
        self.federated_keys = algorithm.federated_client_keys(self.model)
        self.global_state = cpu_state(unique_state(self.model))  # no aliases: see unique_state
        self.exchange = ModelExchange(session.config.exchange_dtype, session.config.exchange_error_feedback,
                                      averaged_keys(self.global_state, self.federated_keys), self.global_state)
        self.residual_files = ResidualFiles(resume_state_path(session.config.output_dir).parent / "exchange",
                                            session.config.keep_exports)
        self.private_states: dict[int, dict] = {}
        # The client parts' server optimiser: every client process steps an identical copy on identical
        # inputs (the round-start part and the all-reduced average), so all hold the same result.
        self.fedopt = ServerOptimizer(ServerOptimizerSettings.from_config(session.config))
        # --keep_silo_optimizer: silo_id -> its trainer's AdamW states, one per stepper (CPU)
        self.silo_optimizers: dict[int, list[dict]] = {}
        self.server_rank = self.topology.server_of(self.rank)  # None: no server (fedavg, centralized)
        if self.server_rank is not None:
            self.channel = session.server_channel(self.server_rank)
        config = self.config
        self.wan = WanModel(config.wan_bandwidth_mbps, config.wan_latency_ms) if config.wan else None
        self.events = EventLog(self.rank, "client", session.start_time)
        # One loader for every silo, round and local round of this process: its workers (with
        # --num_workers) are forked once, not once per (silo, round, local round).
        self.batch_loader = BatchLoader(session.corpus, config.batch_size, config.num_batch, session.masking,
                                        num_workers=config.num_workers, pin_memory=config.pin_memory)
        # With --pin_memory on CUDA the loader hands over page-locked batches, so their copy to the GPU
        # can be asynchronous (the CPU goes on to fetch the next batch). That is safe: the copy is queued
        # on the current stream, which every later kernel reading the batch also runs on (the trainers
        # use no other stream), so none reads it before the copy is done; and the caching host allocator
        # keeps a pinned buffer until the copies recorded on it have finished, even once the CPU batch is
        # dropped. From pageable memory, or to the CPU, non_blocking would do nothing: it is off there.
        self.non_blocking = bool(config.pin_memory) and session.device.type == "cuda"
        self._apply_resume(session.resume)

    # --- one round ---------------------------------------------------------------------------------
    def train_round(self, round_idx: int) -> None:
        weighted_sum = WeightedSum(self.global_state, self.federated_keys)
        trained_silos = self.topology.silos_for(self.rank, round_idx)
        if self.algorithm.server_takes_turns:
            self._wait_for_turn(round_idx)
        self.silos_sampled, self.silos_reported = len(trained_silos), 0
        uploads = []  # bytes each reporting silo put on its link
        for silo_id in trained_silos:
            self._load_silo(silo_id)
            problem = self._train_silo(silo_id, round_idx)
            if problem is not None:
                self._drop_silo(silo_id, round_idx, problem)
                continue
            trained = unique_state(self.model)
            upload = self.exchange.upload(silo_id, trained, self.global_state)  # what survives its encoding
            weighted_sum.add(upload.state, self.session.silo_weight(silo_id))
            self._record_transfer("upload", upload, round_idx, silo_id)
            uploads.append(upload.nbytes)
            self._keep_private(silo_id, trained)
            self.silos_reported += 1
        if self.channel is not None:
            # Paired with the server loop's ROUND_DONE count: nothing more from this process this round.
            self.channel.send(Message(Kind.CONTROL, round=round_idx, control=Control.ROUND_DONE), self.server_rank)
        self._upload_client_parts(uploads)  # overlaps the server's drain
        self.meet_at_round_end()  # paired with every rank's call
        averaged = weighted_sum.reduce(self.session.collectives.sum_clients)  # every client process calls
        download_bytes = 0
        if averaged is not None:
            download = self.exchange.download(self.global_state, self.fedopt.step(self.global_state, averaged))
            self.global_state.update(download.state)
            download_bytes = download.nbytes
            if trained_silos:
                self._record_transfer("download", download, round_idx, None)
        self._download_average(len(trained_silos), download_bytes)
        # beside the checkpoint rank 0 writes after the gather (roles/exchange.py says why it is safe)
        self.exchange.save_residuals(self.residual_files, round_idx + 1, trained_silos,
                                     aggregator=self.is_first_client)
        if self.channel is not None:
            self.channel.flush()  # only now: the server drains our last batches during the model exchange

    def _wait_for_turn(self, round_idx: int) -> None:
        """Wait for the server's TURN (see roles/server.py for the pairing). The server sends
        WAITING at least every --comm_timeout / 4 s (plus one exchange) while it serves an earlier
        process, so each single receive stays bounded by --comm_timeout and a dead server is still
        noticed; the whole wait is bounded only by the earlier processes' turns."""
        while True:
            message = self.channel.recv(self.server_rank)
            if message.kind is Kind.CONTROL and message.control is Control.TURN and message.round == round_idx:
                return
            if not (message.kind is Kind.CONTROL and message.control is Control.WAITING):
                raise RuntimeError(f"protocol error: expected TURN of round {round_idx + 1} from server rank "
                                   f"{self.server_rank}, got {message.kind.name} {message.control.name}")

    def _upload_client_parts(self, uploads: list[int]) -> None:
        """Count each reporting silo's upload (its encoded bytes) and, over an emulated WAN, spend the
        time it would take. Each silo (hospital) has its own connection, so the silos of this process
        upload in parallel: the largest upload, queued behind the activations still on this process's
        connection (the server drains those meanwhile)."""
        if not self.algorithm.exchanges_model or not uploads:
            return  # one process, no aggregator (centralized), or nothing trained here: nothing is exchanged
        for nbytes in uploads:
            self.byte_counter.add_model_exchange("sent", nbytes)
        if self.wan is not None:
            self._spend(max(0.0, self._upload_arrival(max(uploads)) - time.time()))

    def _download_average(self, num_silos: int, state_bytes: int) -> None:
        """Once every upload is in, each sampled silo downloads the new global part (encoded)."""
        if not self.algorithm.exchanges_model or not num_silos or not state_bytes:
            return
        for _ in range(num_silos):
            self.byte_counter.add_model_exchange("received", state_bytes)
        if self.wan is not None:
            self._spend(self.wan.transfer_seconds(state_bytes))

    def _spend(self, seconds: float) -> None:
        time.sleep(seconds)
        self.extra_comm_seconds += seconds

    def _upload_arrival(self, state_bytes: int) -> float:
        """When an upload of the client part posted now would reach the aggregator."""
        if self.channel is not None and self.channel.wan is not None:
            return self.channel.wan.delivery_time(self.server_rank, state_bytes, time.time())
        return time.time() + self.wan.transfer_seconds(state_bytes)

    def _train_silo(self, silo_id: int, round_idx: int) -> str | None:
        """Train one silo for this round; returns why its update is left out of the round, or None.

        A silo that raises, or is still training at --silo_timeout, is cut off at that point: its
        open exchanges with the server are closed (trainer.abandon) and its update is dropped.
        Losing a peer (PeerError) is not a silo's failure: that still ends the run, bounded.
        """
        config = self.config
        seed_torch(config.manual_seed, "client-dropout", round_idx, self._seed_key(silo_id),
                   self._process_salt())
        self.model.train()
        trainer = self.algorithm.client_trainer(self.model, self.channel, self.server_rank, silo_id, round_idx)
        for stepper, state in zip(trainer.steppers, self.silo_optimizers.get(silo_id, [])):
            stepper.load_optimizer_state(state)
        fault = config.fault_injections.get((silo_id, round_idx))
        started = time.time()
        try:
            self._train_local_rounds(trainer, silo_id, round_idx, fault, started)
        except (PeerError, NonFiniteError):
            raise
        except Exception as error:  # noqa: BLE001 -- any failure of one silo's own work
            self.clock.silo_ended = time.perf_counter()  # the next silo's switch starts here
            return self._abandon_silo(trainer, silo_id, round_idx, error)
        logger.debug("client %d round %d trained in %.2fs", silo_id, round_idx + 1, time.time() - started)
        if fault == "nan":  # chaos testing: a poisoned update
            next(self.model.parameters()).data.fill_(float("nan"))
        problem = self._nonfinite_problem(trainer)
        if problem is not None and config.on_nonfinite == "stop":
            raise NonFiniteError(f"client {silo_id} in round {round_idx + 1}: {problem}; stopping (the last "
                                 "checkpoint is intact; --on_nonfinite skip_client leaves such updates out instead)")
        if problem is None and config.keep_silo_optimizer:  # a dropped update keeps its previous moments too
            self.silo_optimizers[silo_id] = [stepper.optimizer_state() for stepper in trainer.steppers]
        return problem

    def _train_local_rounds(self, trainer, silo_id: int, round_idx: int, fault: str | None,
                            started: float) -> None:
        config = self.config
        deadline = None if config.silo_timeout is None else started + config.silo_timeout
        for local_round in range(config.n_local_rounds):
            for batch_idx, batch in enumerate(self._batches(silo_id, round_idx, local_round)):
                global_step = round_idx * config.steps_per_round + local_round * config.num_batch + batch_idx
                if not local_round and not batch_idx:
                    self.clock.first_step()  # the round's start or a silo switch ends here
                result = trainer.step(batch.to(self.session.device, non_blocking=self.non_blocking), global_step)
                self._record(result, round_idx)
                if fault in ("error", "stall"):
                    _inject_fault(fault, config.silo_timeout)
                    fault = None
                if deadline is not None and time.time() > deadline:
                    raise SiloTimeout(f"still training after --silo_timeout {config.silo_timeout:g}s "
                                      f"(step {batch_idx + 1} of local round {local_round + 1})")
        finishing = time.perf_counter()
        for result in trainer.finish():
            self._record(result, round_idx)
        self.clock.silo_ended = self.clock.add("drain", finishing)  # the next silo's switch starts here

    def _abandon_silo(self, trainer, silo_id: int, round_idx: int, error: Exception) -> str:
        expected = isinstance(error, (SiloTimeout, InjectedFault))
        logger.log(logging.WARNING if expected else logging.ERROR, "client %d in round %d: %s: %s",
                   silo_id, round_idx + 1, type(error).__name__, error, exc_info=not expected)
        trainer.abandon()
        self.model.zero_grad(set_to_none=True)  # nothing of this silo's last step reaches the next silo
        return f"{'timed out' if isinstance(error, SiloTimeout) else 'failed'}: {type(error).__name__}: {error}"

    def _nonfinite_problem(self, trainer) -> str | None:
        if trainer.skipped_steps:
            return f"{trainer.skipped_steps} step(s) had a NaN/inf loss or gradient"
        if not all(bool(torch.isfinite(param).all()) for param in self.model.parameters()):
            return "its weights are NaN/inf"
        return None

    def _drop_silo(self, silo_id: int, round_idx: int, problem: str) -> None:
        """An unusable update is never averaged: this silo is left out of the round (--min_clients
        decides at round end whether enough silos reported)."""
        logger.warning("client %d in round %d is left out of the average: %s", silo_id, round_idx + 1, problem)
        self.events.record("dropped", round=round_idx + 1, silo_id=silo_id, reason=problem)

    def _seed_key(self, silo_id: int) -> int:
        """What makes a silo's seeds differ: its id, or nothing with --client_seeds shared."""
        return silo_id if self.config.client_seeds == "distinct" else 0

    def _process_salt(self) -> int:
        """--same_seed_process False gives every process its own dropout stream."""
        return 0 if self.config.same_seed_process else self.rank

    def _batches(self, silo_id: int, round_idx: int, local_round: int):
        config = self.config
        seed = derive_seed(config.manual_seed, "batches", round_idx, self._seed_key(silo_id), local_round)
        return self.batch_loader.batches(self.session.silo_indices[silo_id], seed)

    @property
    def is_first_client(self) -> bool:
        """The client process that reports the shared client part and keeps the aggregate's residual."""
        return self.rank == self.topology.client_ranks[0]

    def round_piece(self) -> RoundPiece:
        first_client = self.is_first_client
        return RoundPiece(rank=self.rank, role="client", events=self.events.drain(),
                          client_state=cpu_state(self.global_state) if first_client else None,
                          fedopt_state=self.fedopt.state_dict() if first_client else None,
                          private_states=self.private_states, silo_optimizers=self.silo_optimizers,
                          silos_sampled=self.silos_sampled,
                          silos_reported=self.silos_reported)

    # --- state ---------------------------------------------------------------------------------------
    def _load_silo(self, silo_id: int) -> None:
        load_unique_state(self.model, {**self.global_state, **self.private_states.get(silo_id, {})})

    def _keep_private(self, silo_id: int, trained: dict) -> None:
        private_keys = set(trained) - set(self.federated_keys)
        private_keys = {key for key in private_keys if trained[key].is_floating_point()}
        if self.config.lora is not None:  # a frozen tensor is the same in every silo: nothing private in it
            private_keys &= set(trainable_keys(self.model))
        if not self.config.fedavg_embedding_head and private_keys:
            self.private_states[silo_id] = cpu_state({key: trained[key] for key in private_keys})

    def _apply_resume(self, resume: dict | None) -> None:
        self.exchange.load_residuals(self.residual_files, None if resume is None else int(resume["round"]),
                                     sorted(self.topology.silos_at(self.rank)),
                                     aggregator=self.is_first_client)
        if resume is None:
            return
        self.global_state.update(resume["client_state"])
        mine = set(self.topology.silos_at(self.rank))
        self.private_states = {cid: s for cid, s in resume["private_states"].items() if cid in mine}
        # Checkpoints written before these existed resume with fresh optimiser state.
        if resume.get("client_fedopt") is not None:
            self.fedopt.load_state_dict(resume["client_fedopt"])
        self.silo_optimizers = {cid: s for cid, s in resume.get("silo_optimizers", {}).items() if cid in mine}

    def _record_transfer(self, direction: str, transfer, round_idx: int, silo_id: int | None) -> None:
        """An `exchange` event in metrics.jsonl: a silo's upload or this process's download of the round's
        model exchange, its encoded bytes and what the encoding lost (docs/model-exchange.md)."""
        if self.algorithm.exchanges_model:
            self.events.record("exchange", round=round_idx + 1, silo_id=silo_id, direction=direction,
                               exchange_dtype=self.exchange.dtype, nbytes=transfer.nbytes,
                               relative_error=transfer.relative_error,
                               changed_row_share=transfer.changed_row_share)

    def _record(self, result, round_idx: int) -> None:
        self.events.record("step", round=round_idx + 1, step=result.step, silo_id=result.silo_id,
                           local_loss=result.local_loss, global_loss=result.global_loss, tokens=result.tokens,
                           bytes_sent=self.byte_counter.total("sent"),
                           bytes_received=self.byte_counter.total("received"))

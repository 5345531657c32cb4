"""What both roles share: the round loop, the round-end gather to rank 0, and the run's end."""
from __future__ import annotations

import logging
import resource
import time
from abc import ABC, abstractmethod

import torch

from fedbiobert.comm.accounting import ByteCounter

from fedbiobert.roles.round_end import ByteDelta, RoundPiece, RoundWriter

logger = logging.getLogger(__name__)


class NonFiniteError(RuntimeError):
    """A loss or update became NaN/inf and --on_nonfinite stop is in force."""


class RoundAborted(RuntimeError):
    """Too few clients reported this round (--min_clients): the run stops at the last checkpoint."""


class RoleProcess(ABC):
    role_name = ""

    def __init__(self, session):
        self.session = session
        self.config = session.config
        self.rank = session.rank
        self.byte_delta = ByteDelta()
        self.writer = RoundWriter(session) if self.rank == 0 else None
        self.current_round = session.start_round
        self.channel = None  # set by a role that talks to peers
        self._local_bytes = ByteCounter()  # used when there is no channel (fedavg, centralized)
        self.extra_comm_seconds = 0.0  # emulated model-exchange transfers (not in the channel)
        self.extra_wait_seconds = 0.0  # at the round-end barrier, waiting for the other processes
        self.clock = RoundClock()  # this round's named parts (the gaps in the time breakdown)
        self._round_seconds = 0.0
        self._trained_at = 0.0  # time.time() when this process's part of the round (FedAvg included) ended
        self._seconds_before = {"wait": 0.0, "comm": 0.0}

    @property
    def byte_counter(self) -> ByteCounter:
        return self._local_bytes if self.channel is None else self.channel.bytes

    def run(self) -> None:
        for round_idx in range(self.session.start_round, self.config.last_round):
            self.current_round = round_idx
            self.clock = RoundClock()
            self.train_round(round_idx)
            self._round_seconds = self.clock.end() - self.clock.started
            self._trained_at = time.time()
            self.end_round(round_idx)

    def meet_at_round_end(self) -> None:
        """Every rank calls this once per round, after its part of the round and before FedAvg
        (Collectives.round_barrier); the time spent there is waiting, not compute."""
        started = time.perf_counter()
        self.session.collectives.round_barrier()
        self.clock.barrier_left = self.clock.add("barrier", started)
        self.extra_wait_seconds += self.clock.barrier_left - started

    @abstractmethod
    def train_round(self, round_idx: int) -> None:
        """Train this round and finish its FedAvg (a collective within the role)."""

    @abstractmethod
    def round_piece(self) -> RoundPiece:
        """What this process contributes to rank 0's round report."""

    def time_breakdown(self) -> dict[str, float]:
        """This round's seconds: blocked on peers (wait), sending (comm), and the rest (compute), and
        the round's named parts besides the steps (RoundClock.PARTS; they overlap those three)."""
        totals = dict(self.channel.seconds) if self.channel is not None else {"wait": 0.0, "comm": 0.0}
        totals["comm"] += self.extra_comm_seconds
        totals["wait"] += self.extra_wait_seconds
        delta = {key: totals[key] - self._seconds_before[key] for key in totals}
        self._seconds_before = totals
        delta["compute"] = max(0.0, self._round_seconds - delta["wait"] - delta["comm"])
        delta["elapsed"] = self._round_seconds
        delta.update(self.clock.parts)
        return delta

    def memory_report(self) -> dict[str, float]:
        """This process's memory this round (`memory` in the round event, largest per role):
        resident set now and its peak since the process started (MB), the CUDA allocator's peak
        this round, and the tensors and payload bytes its channel kept alive for pending sends at
        most this round. A role adds what it keeps itself (a server: batches awaiting a GRAD)."""
        report = {"rss_mb": round(current_rss_bytes() / 2**20, 1),
                  "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
        if self.session.device.type == "cuda":
            report["cuda_peak_mb"] = round(torch.cuda.max_memory_allocated(self.session.device) / 2**20, 1)
            torch.cuda.reset_peak_memory_stats(self.session.device)
        if self.channel is not None:
            report["channel_peak_tensors"] = self.channel.peak_held_tensors
            report["channel_peak_mb"] = round(self.channel.peak_held_bytes / 2**20, 3)
            self.channel.reset_peaks()
        return report

    def end_round(self, round_idx: int) -> None:
        """Gather the round to rank 0, which validates and writes it while every other rank waits in
        the broadcast of its verdict: the next round starts together on every rank, and no
        algorithm's round time absorbs rank 0's validation and writing (they are not training)."""
        piece = self.round_piece()
        piece.seconds = self.time_breakdown()
        piece.trained_at = self._trained_at
        piece.memory = self.memory_report()
        (piece.bytes_sent, piece.bytes_received, piece.model_bytes_sent,
         piece.model_bytes_received) = self.byte_delta.take(self.byte_counter)
        pieces = self.session.collectives.gather_to_rank0(piece)  # every rank calls, once per round
        failure = None
        if self.writer is not None:
            failure = self.writer.round_failure(round_idx, pieces)
            if failure is None:
                self.writer.write(round_idx, pieces)
        failure = self.session.collectives.broadcast_from_rank0(failure)  # every rank learns rank 0's verdict
        if failure is not None:
            raise RoundAborted(failure)

    def finish(self, wall_seconds: float) -> None:
        if self.writer is None:
            return
        summary = self.writer.write_summary(wall_seconds)
        self.writer.close()
        ran = summary["rounds_this_invocation"]
        this_time = (f"trained rounds {summary['first_round_this_invocation']}-{summary['rounds_completed']} "
                     f"({ran} round{'s' if ran != 1 else ''}) in {wall_seconds:.1f}s" if ran else "trained no round")
        logger.info("done: this invocation %s; the run has completed %s of %d rounds in %.1fs, %.0f tokens/s, "
                    "final global loss %s, val loss %s (SE %s), val perplexity %s; outputs in %s",
                    this_time, summary["rounds_completed"], self.config.n_comm_rounds, summary["wall_seconds"],
                    summary["tokens_per_second"] or 0, _fmt(summary["final_global_loss"]), _fmt(summary["val_loss"]),
                    _fmt(summary["val_loss_se"]), _fmt(summary["val_perplexity"]), self.session.output_dir)


class RoundClock:
    """One process's round, by named parts (seconds; `time_breakdown` reports them, results.md shows
    them as the round's gaps). Each part is timed where it happens:

    - start: from the round's start to its first step (a client: loading its first silo, building its
      trainer, fetching the first batch; a server: waiting for the first message, the pipeline fill)
    - switch: a client process from one silo's end to the next silo's first step (silo switches)
    - drain: a client trainer's `finish` at each silo's end (head on the client: settling the OUTPUTs
      still awaited; that is final-head compute as well as waiting for the server)
    - barrier: waiting at the round-end barrier for the other processes (the last silo's drain)
    - fedavg: from the barrier to the end of the round (FedAvg's all-reduce, the server optimiser's
      step, the model download, the last flush)
    """

    PARTS = ("start", "switch", "drain", "barrier", "fedavg")

    def __init__(self):
        self.started = time.perf_counter()
        self.parts: dict[str, float] = {}
        self.silo_ended: float | None = None  # perf_counter at the end of the last silo trained this round
        self.barrier_left = self.started      # ... when this process left the round-end barrier

    def add(self, part: str, since: float) -> float:
        """Add the seconds from `since` to now to `part`; returns now (perf_counter)."""
        now = time.perf_counter()
        self.parts[part] = self.parts.get(part, 0.0) + max(0.0, now - since)
        return now

    def end(self) -> float:
        """The round's part is done here: what followed the barrier was FedAvg; returns now."""
        return self.add("fedavg", self.barrier_left) if "barrier" in self.parts else time.perf_counter()

    def first_step(self) -> None:
        """A client's silo is about to take its first step: the round's start or a silo switch ends."""
        if self.silo_ended is None:
            self.add("start", self.started)
        else:
            self.add("switch", self.silo_ended)


def current_rss_bytes() -> int:
    """Resident set size of this process now (Linux /proc; 0 where it is not available)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as statm:
            return int(statm.read().split()[1]) * resource.getpagesize()
    except (OSError, ValueError, IndexError):
        return 0


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.4f}"

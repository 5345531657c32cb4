"""What a run reports: metrics.jsonl, TensorBoard, the progress display and summary.json.

Every process records events in memory (`EventLog`); at each round end they travel to rank 0 with
the round's state (one gather), and rank 0 alone writes files (`RunReporter`), so no two processes
ever write the same file and no shared file system is needed for metrics.

Every event has the keys of EVENT_KEYS (None where a key does not apply): one `step` event per
optimizer step of a client or server, one `round` event per communication round.
"""
from __future__ import annotations

import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any

from fedbiobert.atomic import write_json_atomically, write_text_atomically

logger = logging.getLogger(__name__)

EVENT_KEYS = ("event", "round", "step", "role", "rank", "silo_id", "local_loss", "global_loss",
              "tokens", "seconds", "bytes_sent", "bytes_received")


def _finite_or_none(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class EventLog:
    """One process's events since the last round end."""

    def __init__(self, rank: int, role: str, start_time: float):
        self.rank = rank
        self.role = role
        self.start_time = start_time
        self.events: list[dict[str, Any]] = []

    def record(self, event: str, **values) -> dict[str, Any]:
        entry = {key: None for key in EVENT_KEYS}
        entry.update(event=event, rank=self.rank, role=self.role,
                     seconds=round(time.time() - self.start_time, 4))
        entry.update({key: _finite_or_none(value) for key, value in values.items()})
        self.events.append(entry)
        return entry

    def drain(self) -> list[dict[str, Any]]:
        events, self.events = self.events, []
        return events


def mean(values) -> float | None:
    finite = [value for value in values if value is not None and math.isfinite(value)]
    return sum(finite) / len(finite) if finite else None


class Progress:
    """Rank 0's display: a tqdm bar on a terminal, plain log lines every `log_every` steps otherwise."""

    def __init__(self, total_rounds: int, steps_per_round: int, log_every: int, first_round: int = 0):
        self.total_rounds = total_rounds
        self.steps_per_round = steps_per_round
        self.log_every = max(1, log_every)
        self.bar = None
        if sys.stderr.isatty():
            from tqdm import tqdm
            self.bar = tqdm(total=total_rounds * steps_per_round, initial=first_round * steps_per_round,
                            unit="step", dynamic_ncols=True, desc="FedBioBERT")

    def step(self, round_idx: int, step_in_round: int, loss: float | None, tokens_per_s: float,
             silo_id: int | None = None) -> None:
        text = f"round {round_idx + 1}/{self.total_rounds} step {step_in_round + 1}/{self.steps_per_round}"
        if silo_id is not None:
            text += f" client {silo_id}"
        loss_text = f"{loss:.4f}" if loss is not None else "-"
        if self.bar is not None:
            self.bar.n = round_idx * self.steps_per_round + step_in_round + 1
            self.bar.set_postfix_str(f"{text} loss {loss_text} {tokens_per_s:,.0f} tok/s")
        elif (step_in_round + 1) % self.log_every == 0:
            logger.info("%s loss %s %.0f tok/s", text, loss_text, tokens_per_s)

    def round_end(self, summary: dict[str, Any]) -> None:
        text = ", ".join(f"{key} {value:.4f}" if isinstance(value, float) else f"{key} {value}"
                         for key, value in summary.items() if value is not None)
        if self.bar is not None:
            self.bar.write(text)
        else:
            logger.info("%s", text)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class RunReporter:
    """Rank 0's writer of metrics.jsonl, TensorBoard scalars and summary.json."""

    def __init__(self, output_dir: Path):
        self.output_dir = output_dir
        self.metrics_path = output_dir / "metrics.jsonl"
        self._tensorboard = None  # created with the first events, so nothing is written before training

    @property
    def tensorboard(self):
        if self._tensorboard is None:
            from torch.utils.tensorboard import SummaryWriter
            self._tensorboard = SummaryWriter(log_dir=str(self.output_dir / "tb"))
        return self._tensorboard

    def write_events(self, events: list[dict[str, Any]]) -> None:
        events = sorted(events, key=lambda entry: (entry["seconds"], entry["rank"]))
        with self.metrics_path.open("a", encoding="utf-8") as stream:
            for entry in events:
                stream.write(json.dumps(entry) + "\n")
        for entry in events:
            self._to_tensorboard(entry)
        self.tensorboard.flush()

    def _to_tensorboard(self, entry: dict[str, Any]) -> None:
        if entry["event"] == "round":
            for key in ("local_loss", "global_loss", "val_loss", "val_perplexity", "round_seconds",
                        "tokens_per_second"):
                if entry.get(key) is not None:
                    self.tensorboard.add_scalar(f"round/{key}", entry[key], entry["round"])
        elif entry["event"] == "step" and entry["silo_id"] is not None:
            global_step = entry["global_step"] if entry.get("global_step") is not None else entry["step"]
            for key in ("local_loss", "global_loss"):
                if entry[key] is not None:
                    self.tensorboard.add_scalar(f"{entry['role']}/{key}/silo{entry['silo_id']}",
                                                entry[key], global_step)

    def truncate_after_round(self, last_kept_round: int) -> list[dict[str, Any]]:
        """A resumed run continues after round `last_kept_round`: drop the events of later rounds
        (they are trained again, and a round must appear once), rewriting metrics.jsonl atomically
        only if something is dropped. Returns the kept `round` events, oldest first."""
        if not self.metrics_path.is_file():
            return []
        events = read_events(self.output_dir)
        kept = [entry for entry in events if (entry.get("round") or 0) <= last_kept_round]
        if len(kept) < len(events):
            write_text_atomically(self.metrics_path, "".join(json.dumps(entry) + "\n" for entry in kept))
            logger.info("metrics.jsonl: dropped %d event(s) of rounds after %d, which this run trains again",
                        len(events) - len(kept), last_kept_round)
        return [entry for entry in kept if entry["event"] == "round"]

    def write_summary(self, summary: dict[str, Any]) -> None:
        write_json_atomically(self.output_dir / "summary.json", summary, end="")

    def close(self) -> None:
        if self._tensorboard is not None:
            self._tensorboard.close()


def read_events(output_dir: Path) -> list[dict[str, Any]]:
    path = Path(output_dir) / "metrics.jsonl"
    with path.open(encoding="utf-8") as stream:
        return [json.loads(line) for line in stream if line.strip()]

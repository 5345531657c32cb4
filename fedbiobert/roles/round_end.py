"""What happens after every communication round, once FedAvg is done in each role.

Every rank contributes one `RoundPiece` (its events, byte counts and, where it holds them, the
global client part, its server replica, and private client states) to a single gather on rank 0.
Rank 0's `RoundWriter` then joins the model, evaluates it on the validation split, writes the
round export, the resume checkpoint and the metrics, and shows the round on the progress display.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass, field

import torch

from fedbiobert.aggregate import weighted_average
from fedbiobert.checkpoint import export_round, prune_rounds, save_resume_state
from fedbiobert.data import validation_batches
from fedbiobert.metrics import Progress, RunReporter, mean
from fedbiobert.model import build_joined_model, gather_masked, load_joined_state, masked_positions, mlm_loss

logger = logging.getLogger(__name__)


@dataclass
class RoundPiece:
    rank: int
    role: str
    events: list[dict]
    bytes_sent: int = 0          # during this round
    bytes_received: int = 0
    client_state: dict | None = None           # the global client part (first client rank only)
    server_state: dict | None = None           # this server's replica (after FedAvg if enabled)
    private_states: dict[int, dict] = field(default_factory=dict)  # client_id -> non-federated tensors
    seconds: dict[str, float] = field(default_factory=dict)  # compute / wait / comm / elapsed this round
    silos_sampled: int = 0       # client processes: silos sampled here this round
    silos_reported: int = 0      # ... and those whose update went into the average


def cpu_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {key: value.detach().cpu().clone() for key, value in state.items()}


class ByteDelta:
    """Per-round byte counts from a channel's cumulative counter."""

    def __init__(self):
        self.last_sent = self.last_received = 0

    def take(self, counter) -> tuple[int, int]:
        sent, received = counter.total("sent"), counter.total("received")
        delta = (sent - self.last_sent, received - self.last_received)
        self.last_sent, self.last_received = sent, received
        return delta


class RoundWriter:
    """Rank 0 only: turns the gathered pieces into files and a round summary."""

    def __init__(self, session):
        self.session = session
        self.config = session.config
        self.reporter = RunReporter(session.output_dir)
        self.progress = Progress(self.config.n_comm_rounds, self.config.steps_per_round, self.config.log_every,
                                 first_round=session.start_round)
        self.val_batches = validation_batches(session.corpus, session.val_indices, self.config.batch_size,
                                              session.masking, seed=self.config.manual_seed,
                                              max_batches=self.config.val_batches)
        self.round_started = time.time()
        self.history: list[dict] = []
        self.joined = None  # the joined model, reused across rounds (see _joined_model)

    def round_failure(self, round_idx: int, pieces: list[RoundPiece]) -> str | None:
        """Why this round cannot be kept (too few clients reported), or None."""
        sampled = sum(piece.silos_sampled for piece in pieces)
        reported = sum(piece.silos_reported for piece in pieces)
        if reported >= self.config.min_clients:
            if reported < sampled:
                logger.warning("round %d: %d of %d sampled clients reported; averaging over those",
                               round_idx + 1, reported, sampled)
            return None
        kept = f"the checkpoint of round {round_idx}" if round_idx else "no round completed yet"
        return (f"round {round_idx + 1}: only {reported} of {sampled} sampled clients reported a usable update "
                f"(--min_clients {self.config.min_clients}); stopping at {kept}")

    def write(self, round_idx: int, pieces: list[RoundPiece]) -> dict:
        state = self._resume_state(round_idx, pieces)
        model = self._joined_model(self._export_client_state(state), state["server_states"].get(0, {}))
        val_loss = evaluate(model, self.val_batches)
        export_round(self.session.output_dir, round_idx + 1, model, self.session.tokenizer)
        save_resume_state(self.session.output_dir, state)
        prune_rounds(self.session.output_dir, round_idx + 1, self.config.keep_exports)
        summary = self._round_event(round_idx, pieces, val_loss)
        events = [event for piece in pieces for event in piece.events] + [summary]
        self.reporter.write_events(events)
        self.progress.round_end({key: summary[key] for key in ("round", "local_loss", "global_loss", "val_loss",
                                                               "val_perplexity", "round_seconds",
                                                               "tokens_per_second")})
        self.history.append(summary)
        return summary

    def _joined_model(self, client_state: dict, server_state: dict):
        """The round's joined model: built once on rank 0's device (on a GPU run a CPU forward of a
        BERT-base validation set would take tens of seconds a round while every process waits), then
        only its weights are overwritten each round."""
        if self.joined is None:
            model = build_joined_model(self.session.hf_config, client_state, server_state)
            self.joined = model.to(self.session.device)
            return self.joined
        return load_joined_state(self.joined, client_state, server_state)

    def _resume_state(self, round_idx: int, pieces: list[RoundPiece]) -> dict:
        client_state = next(piece.client_state for piece in pieces if piece.client_state is not None)
        private = {cid: s for piece in pieces for cid, s in piece.private_states.items()}
        servers = {piece.rank: piece.server_state for piece in pieces if piece.server_state is not None}
        return {"round": round_idx + 1, "config": dataclasses.asdict(self.config), "client_state": client_state,
                "server_states": servers, "private_states": private}

    def _export_client_state(self, state: dict) -> dict:
        """The exported model's client part; private tensors (--fedavg_embedding_head False) are
        averaged over every client that has them, weighted as FedAvg would."""
        export = dict(state["client_state"])
        private = state["private_states"]
        if private:
            ids = sorted(private)
            weights = [self.session.client_weight(cid) for cid in ids]
            export.update(weighted_average([private[cid] for cid in ids], weights))
        return export

    def _round_event(self, round_idx: int, pieces: list[RoundPiece], val_loss: float | None) -> dict:
        now = time.time()
        round_seconds, self.round_started = now - self.round_started, now
        steps = [event for piece in pieces for event in piece.events if event["event"] == "step"]
        global_role = "server" if self.config.is_split and self.config.head_placement == "server" else "client"
        tokens = sum(event["tokens"] or 0 for event in steps if event["role"] == "client")
        clients = [piece for piece in pieces if piece.role == "client"]
        return {
            "event": "round", "round": round_idx + 1, "step": None, "role": "coordinator", "rank": 0,
            "client_id": None, "seconds": round(now - self.session.start_time, 4),
            "local_loss": mean(event["local_loss"] for event in steps if event["role"] == "client"),
            "global_loss": mean(event["global_loss"] for event in steps if event["role"] == global_role),
            "val_loss": val_loss, "val_perplexity": _perplexity(val_loss),
            "tokens": tokens, "round_seconds": round(round_seconds, 4),
            "tokens_per_second": tokens / round_seconds if round_seconds > 0 else None,
            "bytes_sent": sum(piece.bytes_sent for piece in clients),        # client -> server (up)
            "bytes_received": sum(piece.bytes_received for piece in clients),  # server -> client (down)
            "clients": sorted({event["client_id"] for event in steps if event["role"] == "client"}),
            "time_breakdown": time_breakdown(pieces),
            "clients_sampled": sum(piece.silos_sampled for piece in pieces),
            "clients_reported": sum(piece.silos_reported for piece in pieces),
        }

    def write_summary(self, wall_seconds: float) -> dict:
        last = self.history[-1] if self.history else {}
        tokens = sum(entry["tokens"] for entry in self.history)
        train_seconds = sum(entry["round_seconds"] for entry in self.history)
        summary = {
            "algorithm": self.config.algorithm, "arch": self.config.arch,
            "num_client_encoder": self.config.num_client_encoder,
            "num_server_encoder": self.config.num_server_encoder, "head_placement": self.config.head_placement,
            "world_size": self.session.launch.world_size, "rounds_completed": last.get("round"),
            "rounds_this_run": len(self.history), "wall_seconds": round(wall_seconds, 3),
            "train_seconds": round(train_seconds, 3), "tokens": tokens,
            "tokens_per_second": tokens / train_seconds if train_seconds > 0 else None,
            "final_local_loss": last.get("local_loss"), "final_global_loss": last.get("global_loss"),
            "val_loss": last.get("val_loss"), "val_perplexity": last.get("val_perplexity"),
            "bytes_up": sum(entry["bytes_sent"] for entry in self.history),
            "bytes_down": sum(entry["bytes_received"] for entry in self.history),
            "link": self.config.link, "comm_dtype": self.config.comm_dtype,
            "time_breakdown": _sum_breakdowns(self.history),
            "pipeline_efficiency": _pipeline_efficiency(self.history),
            "rounds": self.history,
        }
        self.reporter.write_summary(summary)
        return summary

    def close(self) -> None:
        self.progress.close()
        self.reporter.close()


def time_breakdown(pieces: list[RoundPiece]) -> dict[str, dict[str, float]]:
    """Per role, the mean over its processes of compute / wait / comm seconds this round, plus the
    busiest process's compute seconds (the pipeline's slowest stage)."""
    result = {}
    for role in ("client", "server"):
        seconds = [piece.seconds for piece in pieces if piece.role == role and piece.seconds]
        if seconds:
            result[role] = {key: round(sum(s[key] for s in seconds) / len(seconds), 4)
                            for key in ("compute", "wait", "comm", "elapsed")}
            result[role]["max_compute"] = round(max(s["compute"] for s in seconds), 4)
            result[role]["max_elapsed"] = round(max(s["elapsed"] for s in seconds), 4)
    return result


@torch.no_grad()
def evaluate(model, batches) -> float | None:
    """Mean MLM loss over the masked positions of the validation batches (None without batches),
    computed on the model's device."""
    if not batches:
        return None
    model.eval()
    base = getattr(model, model.base_model_prefix)
    device = next(model.parameters()).device
    losses = []
    for batch in (batch.to(device) for batch in batches):
        hidden = base(input_ids=batch.input_ids, attention_mask=batch.attention_mask).last_hidden_state
        positions = masked_positions(batch.labels)
        logits = _mlm_head(model)(gather_masked(hidden, positions))
        losses.append(float(mlm_loss(logits, batch.labels.reshape(-1)[positions])))
    return sum(losses) / len(losses)


def _sum_breakdowns(history: list[dict]) -> dict[str, dict[str, float]]:
    total: dict[str, dict[str, float]] = {}
    for entry in history:
        for role, seconds in entry["time_breakdown"].items():
            for key, value in seconds.items():
                total.setdefault(role, {}).setdefault(key, 0.0)
                total[role][key] = round(total[role][key] + value, 4)
    return total


def _pipeline_efficiency(history: list[dict]) -> float | None:
    """Slowest stage's compute time / measured round time, over the rounds of this run (1.0: the
    busiest process never waited; split learning that blocks every step scores low)."""
    busiest = sum(max(s["max_compute"] for s in entry["time_breakdown"].values()) for entry in history
                  if entry["time_breakdown"])
    elapsed = sum(max(s["max_elapsed"] for s in entry["time_breakdown"].values()) for entry in history
                  if entry["time_breakdown"])
    return round(busiest / elapsed, 4) if elapsed > 0 else None


def _mlm_head(model):
    return model.cls if hasattr(model, "cls") else model.lm_head


def _perplexity(loss: float | None) -> float | None:
    if loss is None:
        return None
    return math.exp(min(loss, 50.0))

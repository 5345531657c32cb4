"""What happens after every communication round, once FedAvg is done in each role.

Every rank contributes one `RoundPiece` (its events, byte counts and, where it holds them, the
global client part, its server replica, and private client states) to a single gather on rank 0.
Rank 0's `RoundWriter` then joins the model, evaluates it on the validation split, writes the
round export, the resume checkpoint and the metrics, and shows the round on the progress display.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field

import torch

from fedbiobert.aggregate import weighted_average
from fedbiobert.checkpoint import (config_record, data_fingerprints, export_round, prune_rounds,
                                   save_resume_state)
from fedbiobert.validation import ValidationSet
from fedbiobert.metrics import Progress, RunReporter, mean
from fedbiobert.lora import merged_state
from fedbiobert.model import build_joined_model, decoder_is_tied, load_joined_state

logger = logging.getLogger(__name__)


@dataclass
class RoundPiece:
    rank: int
    role: str
    events: list[dict]
    bytes_sent: int = 0          # during this round
    bytes_received: int = 0
    model_bytes_sent: int = 0    # ... of which the FedAvg model exchange (kind STATE)
    model_bytes_received: int = 0
    client_state: dict | None = None           # the global client part (first client rank only)
    server_state: dict | None = None           # this server's replica (after FedAvg if enabled)
    private_states: dict[int, dict] = field(default_factory=dict)  # silo_id -> non-federated tensors
    fedopt_state: dict | None = None             # the server optimiser of the averaged part (see server_optimizer)
    silo_optimizers: dict[int, list] = field(default_factory=dict)  # --keep_silo_optimizer: silo_id -> AdamW states
    optimizer_state: list | None = None          # a server's AdamW states kept across rounds
    seconds: dict[str, float] = field(default_factory=dict)  # compute / wait / comm / elapsed / parts this round
    trained_at: float = 0.0      # time.time() when this process's part of the round, FedAvg included, ended
    silos_sampled: int = 0       # client processes: silos sampled here this round
    silos_reported: int = 0      # ... and those whose update went into the average
    memory: dict[str, float] = field(default_factory=dict)  # see RoleProcess.memory_report


def cpu_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {key: value.detach().cpu().clone() for key, value in state.items()}


class ByteDelta:
    """Per-round byte counts from a channel's cumulative counter: (sent, received, model exchange
    sent, model exchange received), the last two the FedAvg traffic included in the first two."""

    def __init__(self):
        self.last = (0, 0, 0, 0)

    def take(self, counter) -> tuple[int, int, int, int]:
        now = (counter.total("sent"), counter.total("received"), counter.payload.get(("sent", "STATE"), 0),
               counter.payload.get(("received", "STATE"), 0))
        delta = tuple(value - last for value, last in zip(now, self.last))
        self.last = now
        return delta


class RoundWriter:
    """Rank 0 only: turns the gathered pieces into files and a round summary."""

    def __init__(self, session):
        self.session = session
        self.config = session.config
        self.reporter = RunReporter(session.output_dir)
        self.progress = Progress(self.config.n_comm_rounds, self.config.steps_per_round, self.config.log_every,
                                 first_round=session.start_round)
        # session.val_sample is validation_sample(val_indices, --val_blocks, seed): the rows rank 0 kept.
        self.validation = ValidationSet(session.corpus, session.val_sample, None,
                                        self.config.batch_size, session.masking, seed=self.config.manual_seed)
        logger.info("validation set: %d blocks from %d files", len(self.validation),
                    len(set(self.validation.file_of_row.tolist())))
        self.round_started = time.time()
        # Rounds of earlier invocations of this run (a resume): the summary covers the whole run.
        self.earlier_rounds: list[dict] = self.reporter.truncate_after_round(session.start_round)
        self.history: list[dict] = []
        self.joined = None  # the joined model, reused across rounds (see _joined_model)
        # Corpus, vocabulary and --init_from by content, once (they do not change during a run): a resume
        # compares them, so moved but identical inputs are accepted and changed ones refused.
        self.fingerprints = data_fingerprints(self.config, session.tokenizer)

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
        trained_until, handoff = training_end(pieces, time.time())
        state = self._resume_state(round_idx, pieces)
        model = self._joined_model(self._merged(self._export_client_state(state)),
                                   self._merged(state["server_states"].get(0, {})))
        validation = self.validation.evaluate(model, self.config.precision)
        summary = self._round_event(round_idx, pieces, validation, trained_until)
        summary["handoff_seconds"] = round(handoff, 4)
        state["run_seconds"] = summary["seconds"]
        export_round(self.session.output_dir, round_idx + 1, model, self.session.tokenizer)
        save_resume_state(self.session.output_dir, state)
        prune_rounds(self.session.output_dir, round_idx + 1, self.config.keep_exports)
        events = [event for piece in pieces for event in piece.events] + [summary]
        self.reporter.write_events(events)
        self.progress.round_end({key: summary[key] for key in ("round", "local_loss", "global_loss", "val_loss",
                                                               "val_loss_se", "val_perplexity", "round_seconds",
                                                               "tokens_per_second")})
        self.history.append(summary)
        self.round_started = time.time()  # the next round's clock starts after this round's report
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

    def _merged(self, state: dict) -> dict:
        """A part's state under stock HF names: LoRA adapters folded into their base weights (lora.py)."""
        lora = self.config.lora
        return merged_state(state, lora.scaling) if lora is not None else state

    def _resume_state(self, round_idx: int, pieces: list[RoundPiece]) -> dict:
        client_state = next(piece.client_state for piece in pieces if piece.client_state is not None)
        private = {cid: s for piece in pieces for cid, s in piece.private_states.items()}
        servers = {piece.rank: piece.server_state for piece in pieces if piece.server_state is not None}
        return {"round": round_idx + 1, "config": config_record(self.config), "fingerprints": self.fingerprints,
                "client_state": client_state, "server_states": servers, "private_states": private,
                **optimizer_states(pieces)}

    def _export_client_state(self, state: dict) -> dict:
        """The exported model's client part; private tensors (--fedavg_embedding_head False) are
        averaged over every client that has them, weighted as FedAvg would."""
        export = dict(state["client_state"])
        private = state["private_states"]
        if private:
            ids = sorted(private)
            weights = [self.session.silo_weight(cid) for cid in ids]
            export.update(weighted_average([private[cid] for cid in ids], weights))
        return export

    def _round_event(self, round_idx: int, pieces: list[RoundPiece], validation, trained_until: float) -> dict:
        """The round's summary event. round_seconds is training time: from the end of the last
        round's report to the end of this round's FedAvg on the last process to finish it (the
        hand-off of the round to rank 0, validation and writing excluded: see training_end)."""
        now = trained_until
        round_seconds = now - self.round_started
        val_loss = validation.loss if validation is not None else None
        steps = [event for piece in pieces for event in piece.events if event["event"] == "step"]
        global_role = self.config.rules.global_loss_role(self.config)  # where the final head ran
        tokens = sum(event["tokens"] or 0 for event in steps if event["role"] == "client")
        clients = [piece for piece in pieces if piece.role == "client"]
        return {
            "event": "round", "round": round_idx + 1, "step": None, "role": "coordinator", "rank": 0,
            "silo_id": None, "seconds": round(now - self.session.start_time, 4),
            "local_loss": mean(event["local_loss"] for event in steps if event["role"] == "client"),
            "global_loss": mean(event["global_loss"] for event in steps if event["role"] == global_role),
            "val_loss": val_loss, "val_perplexity": _perplexity(val_loss),
            "val_loss_se": validation.standard_error if validation is not None else None,
            "val_loss_by_file": validation.loss_by_file if validation is not None else None,
            "tokens": tokens, "round_seconds": round(round_seconds, 4),
            "tokens_per_second": tokens / round_seconds if round_seconds > 0 else None,
            "bytes_sent": sum(piece.bytes_sent for piece in clients),        # client -> server (up)
            "bytes_received": sum(piece.bytes_received for piece in clients),  # server -> client (down)
            "model_bytes_sent": sum(piece.model_bytes_sent for piece in clients),  # ... of which FedAvg's
            "model_bytes_received": sum(piece.model_bytes_received for piece in clients),
            "clients": sorted({event["silo_id"] for event in steps if event["role"] == "client"}),
            "time_breakdown": time_breakdown(pieces),
            "memory": memory_by_role(pieces),
            "clients_sampled": sum(piece.silos_sampled for piece in pieces),
            "clients_reported": sum(piece.silos_reported for piece in pieces),
        }

    def write_summary(self, wall_seconds: float) -> dict:
        """summary.json over the whole run, earlier invocations (a resume) included; the
        *_this_invocation keys say what this invocation did."""
        rounds = self.earlier_rounds + self.history
        last = rounds[-1] if rounds else {}
        tokens = sum(entry["tokens"] or 0 for entry in rounds)
        train_seconds = sum(entry["round_seconds"] or 0 for entry in rounds)
        earlier_seconds = self.session.resume.get("run_seconds", 0.0) if self.session.resume else 0.0
        summary = {
            "algorithm": self.config.algorithm, "arch": self.config.arch,
            "num_client_encoder": self.config.num_client_encoder,
            "num_server_encoder": self.config.num_server_encoder, "head_placement": self.config.head_placement,
            "world_size": self.session.launch.world_size, "rounds_completed": last.get("round"),
            "rounds_this_invocation": len(self.history),
            "first_round_this_invocation": self.history[0]["round"] if self.history else None,
            "wall_seconds": round(earlier_seconds + wall_seconds, 3),
            "wall_seconds_this_invocation": round(wall_seconds, 3),
            "train_seconds": round(train_seconds, 3), "tokens": tokens,
            "tokens_per_second": tokens / train_seconds if train_seconds > 0 else None,
            "final_local_loss": last.get("local_loss"), "final_global_loss": last.get("global_loss"),
            "val_loss": last.get("val_loss"), "val_loss_se": last.get("val_loss_se"),
            "val_loss_by_file": last.get("val_loss_by_file"), "val_perplexity": last.get("val_perplexity"),
            "val_blocks": len(self.validation),
            "bytes_up": sum(entry["bytes_sent"] or 0 for entry in rounds),
            "bytes_down": sum(entry["bytes_received"] or 0 for entry in rounds),
            "wan": self.config.wan, "comm_dtype": self.config.comm_dtype,
            "exchange_dtype": self.config.exchange_dtype,
            "exchange_error_feedback": self.config.exchange_error_feedback,
            "decoders_tied": self.joined is not None and decoder_is_tied(self.joined),
            "lora": self.config.lora.record() if self.config.lora is not None else None,
            "time_breakdown": _sum_breakdowns(rounds),
            "memory": _max_by_role(entry.get("memory") or {} for entry in rounds),
            "pipeline_efficiency": _pipeline_efficiency(rounds),
            "rounds": rounds,
        }
        self.reporter.write_summary(summary)
        return summary

    def close(self) -> None:
        self.progress.close()
        self.reporter.close()


def optimizer_states(pieces: list[RoundPiece]) -> dict:
    """What a resume needs to continue every optimiser as if uninterrupted: the client parts' server
    optimiser (identical on every client process: the first one's), the server replicas' (server rank
    0's), each silo's AdamW (--keep_silo_optimizer) and each server's AdamW (--keep_server_optimizer)."""
    def first(role):
        return next((piece.fedopt_state for piece in pieces if piece.role == role and piece.fedopt_state), None)
    return {"client_fedopt": first("client"), "server_fedopt": first("server"),
            "silo_optimizers": {cid: s for piece in pieces for cid, s in piece.silo_optimizers.items()},
            "server_optimizers": {piece.rank: piece.optimizer_state for piece in pieces
                                  if piece.optimizer_state is not None}}


def training_end(pieces: list[RoundPiece], gathered_at: float) -> tuple[float, float]:
    """When the round's training ended, and the seconds from then to `gathered_at` (the hand-off: each
    process building its piece and the gather to rank 0, which only the report needs): the latest
    process's end of FedAvg, on its own clock, kept between rank 0's end (the gather starts after it)
    and `gathered_at` (so clocks of other hosts that disagree cannot move it out of that span)."""
    own = next((piece.trained_at for piece in pieces if piece.rank == 0), 0.0)
    latest = max((piece.trained_at for piece in pieces), default=0.0)
    if not own or not latest:  # pieces without a time: the gather's end, as before
        return gathered_at, 0.0
    ended = min(gathered_at, max(own, latest))
    return ended, gathered_at - ended


def time_breakdown(pieces: list[RoundPiece]) -> dict[str, dict[str, float]]:
    """Per role, the mean over its processes of compute / wait / comm seconds this round and of each
    named part of the round (RoundClock.PARTS, 0 where a process had none), plus the busiest
    process's compute seconds (the pipeline's slowest stage)."""
    result = {}
    for role in ("client", "server"):
        seconds = [piece.seconds for piece in pieces if piece.role == role and piece.seconds]
        if seconds:
            keys = ["compute", "wait", "comm", "elapsed"]
            keys += sorted({key for s in seconds for key in s} - set(keys))
            result[role] = {key: round(sum(s.get(key, 0.0) for s in seconds) / len(seconds), 4) for key in keys}
            result[role]["max_compute"] = round(max(s["compute"] for s in seconds), 4)
            result[role]["max_elapsed"] = round(max(s["elapsed"] for s in seconds), 4)
    return result


def memory_by_role(pieces: list[RoundPiece]) -> dict[str, dict[str, float]]:
    """Per role, the largest value over its processes of each memory figure this round."""
    return _max_by_role({piece.role: piece.memory} for piece in pieces if piece.memory)


def _max_by_role(entries) -> dict[str, dict[str, float]]:
    result: dict[str, dict[str, float]] = {}
    for entry in entries:
        for role, figures in entry.items():
            for key, value in figures.items():
                result.setdefault(role, {})[key] = max(value, result.get(role, {}).get(key, value))
    return result


def _sum_breakdowns(history: list[dict]) -> dict[str, dict[str, float]]:
    total: dict[str, dict[str, float]] = {}
    for entry in history:
        for role, seconds in (entry.get("time_breakdown") or {}).items():
            for key, value in seconds.items():
                total.setdefault(role, {}).setdefault(key, 0.0)
                total[role][key] = round(total[role][key] + value, 4)
    return total


def _pipeline_efficiency(history: list[dict]) -> float | None:
    """Slowest stage's compute time / measured round time, over the rounds of this run (1.0: the
    busiest process never waited; split learning that blocks every step scores low)."""
    history = [entry for entry in history if entry.get("time_breakdown")]
    busiest = sum(max(s["max_compute"] for s in entry["time_breakdown"].values()) for entry in history)
    elapsed = sum(max(s["max_elapsed"] for s in entry["time_breakdown"].values()) for entry in history)
    return round(busiest / elapsed, 4) if elapsed > 0 else None


def _perplexity(loss: float | None) -> float | None:
    if loss is None:
        return None
    return math.exp(min(loss, 50.0))

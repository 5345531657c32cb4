"""Results: a run's summary.json -> one results.json row; speedups; the machine description.

Timing conventions (repeated in results.md):
- seconds_per_round is the median `round_seconds` of the rounds after the first (round 1 includes
  warm-up: allocator, first collectives, pipeline fill); with a single round it is that round's time.
  With --repeat N the matrix runs N times over, interleaved, and a run's seconds_per_round and
  tokens_per_second are the medians over its N passes (merge_repeats).
- tokens_per_second is the steady-state rate over the same rounds (tokens / seconds of rounds 2..N);
  summary.json's overall rate (round 1 included) is kept as tokens_per_second_all_rounds.
- speedup_vs_fedbert = seconds_per_round of fedbert 0-L with the same link / this run's seconds_per_round
  (> 1: faster than the original FedBERT). Centralized (link None) compares with the no-link
  fedbert 0-L. None when that baseline did not run or failed. speedup_vs_fedbert_masked is the same
  against fedbert-0-L-masked (its server returns the masked rows only: a stronger baseline).
"""
from __future__ import annotations

import os
import platform
import statistics
import subprocess
from pathlib import Path

from fedbiobert.bench.matrix import Link, RunSpec, link_label
from fedbiobert.bench.runner import REPO, RunOutcome

OPTIONAL_SUMMARY_KEYS = ("time_breakdown", "pipeline_efficiency")


def steady_rounds(rounds: list[dict]) -> list[dict]:
    """The rounds after the first (warm-up); all of them when there is only one."""
    return rounds[1:] if len(rounds) > 1 else list(rounds)


def seconds_per_round(rounds: list[dict]) -> float | None:
    seconds = [entry["round_seconds"] for entry in steady_rounds(rounds) if entry.get("round_seconds")]
    return statistics.median(seconds) if seconds else None


def steady_tokens_per_second(rounds: list[dict]) -> float | None:
    steady = steady_rounds(rounds)
    seconds = sum(entry.get("round_seconds") or 0 for entry in steady)
    return sum(entry.get("tokens") or 0 for entry in steady) / seconds if seconds > 0 else None


def loss_curve(rounds: list[dict]) -> list[dict]:
    """Per round end: cumulative training seconds and the losses (for loss_vs_time.png)."""
    curve, elapsed = [], 0.0
    for entry in rounds:
        elapsed += entry.get("round_seconds") or 0.0
        curve.append({"round": entry.get("round"), "train_seconds": round(elapsed, 4),
                      "val_loss": entry.get("val_loss"), "global_loss": entry.get("global_loss"),
                      "local_loss": entry.get("local_loss")})
    return curve


def spec_fields(spec: RunSpec) -> dict:
    return {"name": spec.name, "entry": spec.entry, "algorithm": spec.algorithm,
            "num_client_encoder": spec.num_client_encoder, "num_server_encoder": spec.num_server_encoder,
            "link": spec.link.to_json() if spec.link is not None else None, "nproc": spec.nproc,
            "num_device": spec.num_device, "n_clients": spec.n_clients, "num_batch": spec.num_batch,
            "tokens_per_round_budget": spec.tokens_per_round, "baseline": spec.is_baseline,
            "masked_baseline": spec.is_masked_baseline}


def result_row(spec: RunSpec, outcome: RunOutcome) -> dict:
    """One results.json row; measured fields are None for a failed run."""
    row = {**spec_fields(spec), "status": outcome.status, "error": outcome.error,
           "log": str(outcome.log_path), "output_dir": str(outcome.run_dir),
           "process_seconds": round(outcome.seconds, 3)}
    summary = outcome.summary or {}
    rounds = summary.get("rounds") or []
    count = len(rounds) or None
    row.update({
        "rounds": len(rounds), "seconds_per_round": seconds_per_round(rounds),
        "first_round_seconds": rounds[0].get("round_seconds") if rounds else None,
        "tokens_per_second": steady_tokens_per_second(rounds),
        "tokens_per_second_all_rounds": summary.get("tokens_per_second"),
        "tokens": summary.get("tokens"), "wall_seconds": summary.get("wall_seconds"),
        "train_seconds": summary.get("train_seconds"),
        "bytes_up_per_round": summary["bytes_up"] / count if count and "bytes_up" in summary else None,
        "bytes_down_per_round": summary["bytes_down"] / count if count and "bytes_down" in summary else None,
        "final_global_loss": summary.get("final_global_loss"), "final_local_loss": summary.get("final_local_loss"),
        "val_loss": summary.get("val_loss"), "val_perplexity": summary.get("val_perplexity"),
        "speedup_vs_fedbert": None, "speedup_vs_fedbert_masked": None, "curve": loss_curve(rounds),
    })
    row.update({key: summary[key] for key in OPTIONAL_SUMMARY_KEYS if key in summary})
    return row


def merge_repeats(passes: list[dict]) -> dict:
    """One row from the rows of the same run in several passes of the matrix: s/round and tokens/s
    are the medians over the passes (each pass's value kept in seconds_per_round_passes); a run that
    failed in any pass is reported failed, with that pass's error."""
    if len(passes) == 1:
        return passes[0]
    failed = [row for row in passes if row["status"] != "ok"]
    merged = dict(failed[0] if failed else passes[-1])
    merged["seconds_per_round_passes"] = [row.get("seconds_per_round") for row in passes]
    merged["passes"] = len(passes)
    if not failed:
        for key in ("seconds_per_round", "tokens_per_second"):
            values = [row[key] for row in passes if row.get(key) is not None]
            merged[key] = statistics.median(values) if values else None
    return merged


def link_key(row: dict) -> tuple | None:
    link = row.get("link")
    return None if link is None else (link["bandwidth_mbps"], link["latency_ms"])


def add_speedups(rows: list[dict]) -> list[dict]:
    """Fill speedup_vs_fedbert (and _masked) in place: baseline seconds/round (same link) / this run's."""
    for field, flag in (("speedup_vs_fedbert", "baseline"), ("speedup_vs_fedbert_masked", "masked_baseline")):
        baselines = {link_key(row): row["seconds_per_round"] for row in rows
                     if row.get(flag) and row["status"] == "ok" and row.get("seconds_per_round")}
        for row in rows:
            baseline, own = baselines.get(link_key(row)), row.get("seconds_per_round")
            row[field] = baseline / own if baseline and own and row["status"] == "ok" else None
    return rows


def describe_link(row: dict) -> str:
    link = row.get("link")
    return link_label(None if link is None else Link(link["bandwidth_mbps"], link["latency_ms"]))


def machine_info() -> dict:
    """Where the benchmark ran (written once, to machine.json and results.md's header)."""
    import torch
    import transformers
    cuda = torch.cuda.is_available()
    return {"platform": platform.platform(), "processor": _cpu_model(), "cpu_count": os.cpu_count(),
            "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__,
            "device": torch.cuda.get_device_name(0) if cuda else "cpu",
            "cuda_devices": torch.cuda.device_count() if cuda else 0, "git_commit": _git_commit()}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _git_commit() -> str | None:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                                text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{commit}{' (modified)' if dirty else ''}" if commit else None

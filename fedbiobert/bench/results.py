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
- speedup_like_for_like: against FedBERT with the same head placement and link (head on the server:
  fedbert-0-L-serverhead; on the client, and for full-model algorithms: fedbert-0-L).
- link_overhead = this run's seconds_per_round / the same entry's without a link (how much the link
  costs it, a ratio that depends much less on the machine's compute speed than a speed-up over a link).
- stage_bound (fedbiobert runs without a link): the like-for-like speed-up the run's own stage times
  allow, the baseline's s/round / this run's busiest stage (the largest per-process compute per round);
  bound_fraction = speedup_like_for_like / stage_bound = busiest stage / this run's s/round (1.0: the
  round took no longer than its busiest stage, all the overlap the stages allow). serial_stage_bound is
  the earlier form, FedBERT's client + server compute / the busiest stage: FedBERT is not strictly
  serial (its server steps its optimiser while its client back-propagates the gradient at the cut),
  so its round can be shorter than that sum and a perfect pipeline could not reach 1.0 against it.
- round_gaps: medians over the steady rounds of each role's round parts besides its steps
  (roles/base.py RoundClock: start, switch, drain, barrier, fedavg) and of its wait and comm seconds,
  and of handoff, the round's hand-off to rank 0 (not in s/round).
- seconds_to_target: cumulative training seconds at the first round end whose validation loss is at
  or below the target, the final validation loss of the published FedBERT (fedbert-0-L, no link); None
  when the run never reaches it (reached_target False).
- val_loss_vs_baseline: validation loss minus the like-for-like baseline's, and val_loss_differs: whether
  that exceeds 1.96 standard errors of the difference (validation.differs).
"""
from __future__ import annotations

import os
import platform
import statistics
import subprocess
from pathlib import Path

from fedbiobert.bench.matrix import Link, RunSpec, link_label
from fedbiobert.bench.runner import REPO, RunOutcome
from fedbiobert.validation import differs

OPTIONAL_SUMMARY_KEYS = ("time_breakdown", "pipeline_efficiency", "lora", "exchange_dtype")


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


def stage_compute(rounds: list[dict]) -> dict | None:
    """Median over the steady rounds of each role's compute seconds per round: `client` and `server`
    (mean over a role's processes) and `busiest` (the largest single process's compute)."""
    timed = [entry["time_breakdown"] for entry in steady_rounds(rounds) if entry.get("time_breakdown")]
    if not timed:
        return None
    result = {role: statistics.median(t.get(role, {}).get("compute", 0.0) for t in timed)
              for role in ("client", "server")}
    result["busiest"] = statistics.median(max(s["max_compute"] for s in t.values()) for t in timed)
    return result


GAP_KEYS = ("start", "switch", "drain", "barrier", "fedavg", "wait", "comm")


def round_gaps(rounds: list[dict]) -> dict | None:
    """Median over the steady rounds of each role's named round parts, wait and comm seconds (the mean
    over a role's processes, as time_breakdown gives them), and of the hand-off to rank 0."""
    steady = [entry for entry in steady_rounds(rounds) if entry.get("time_breakdown")]
    if not steady:
        return None
    result: dict = {}
    for role in ("client", "server"):
        timed = [entry["time_breakdown"][role] for entry in steady if role in entry["time_breakdown"]]
        if timed:
            result[role] = {key: statistics.median(t.get(key, 0.0) for t in timed) for key in GAP_KEYS}
    handoff = [entry["handoff_seconds"] for entry in steady if entry.get("handoff_seconds") is not None]
    result["handoff"] = statistics.median(handoff) if handoff else None
    return result


def _median_tree(values: list):
    """Element-wise median of equally shaped dicts of numbers (None where any is None)."""
    if isinstance(values[0], dict):
        return {key: _median_tree([value.get(key) for value in values]) for key in values[0]}
    return None if any(value is None for value in values) else statistics.median(values)


def per_step(spec: RunSpec, rounds: list[dict]) -> dict | None:
    """Per training step (one batch of one silo), over the steady rounds: each role's compute seconds
    (a client process trains its silos' steps in turn, a server serves its clients' steps) and the
    split-learning bytes each way (the FedAvg model exchange apart, per round). Participation is 1.0
    in the benchmark, so a round has n_clients x num_batch steps."""
    steady = steady_rounds(rounds)
    stages = stage_compute(rounds)
    steps = spec.n_clients * spec.num_batch
    if not steady or not stages or not steps:
        return None
    client_processes = spec.nproc - spec.num_device
    result = {"client_compute_seconds": stages["client"] * client_processes / steps,
              "server_compute_seconds": stages["server"] * spec.num_device / steps if spec.num_device else None}
    for way, key in (("up", "sent"), ("down", "received")):
        split_bytes = [(entry.get(f"bytes_{key}") or 0) - (entry.get(f"model_bytes_{key}") or 0) for entry in steady]
        result[f"bytes_{way}"] = statistics.median(split_bytes) / steps
        result[f"model_bytes_{way}_per_round"] = statistics.median(entry.get(f"model_bytes_{key}") or 0
                                                                   for entry in steady)
    return result


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
            "masked_baseline": spec.is_masked_baseline, "serverhead_baseline": spec.is_serverhead_baseline,
            "head_placement": spec.head_placement}


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
        "val_loss": summary.get("val_loss"), "val_loss_se": summary.get("val_loss_se"),
        "val_loss_by_file": summary.get("val_loss_by_file"), "val_perplexity": summary.get("val_perplexity"),
        "stage_compute": stage_compute(rounds), "round_gaps": round_gaps(rounds),
        "per_step": per_step(spec, rounds),
        "memory": summary.get("memory"),
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
        for key in ("stage_compute", "round_gaps"):
            measured = [row[key] for row in passes if row.get(key)]
            if measured:
                merged[key] = _median_tree(measured)
    return merged


def link_key(row: dict) -> tuple | None:
    link = row.get("link")
    return None if link is None else (link["bandwidth_mbps"], link["latency_ms"])


def add_speedups(rows: list[dict]) -> list[dict]:
    """Fill every comparative measure of the module docstring in place."""
    ok = [row for row in rows if row["status"] == "ok" and row.get("seconds_per_round")]
    usable = {id(row) for row in ok}
    for field, flag in (("speedup_vs_fedbert", "baseline"), ("speedup_vs_fedbert_masked", "masked_baseline")):
        baselines = {link_key(row): row["seconds_per_round"] for row in ok if row.get(flag)}
        for row in rows:
            row[field] = _ratio(baselines.get(link_key(row)), row, id(row) in usable)
    like = {(link_key(row), row.get("head_placement", "client")): row for row in ok
            if row.get("baseline") or row.get("serverhead_baseline")}
    no_link = {row["entry"]: row["seconds_per_round"] for row in ok if row.get("link") is None}
    target = next((row.get("val_loss") for row in ok if row.get("baseline") and row.get("link") is None), None)
    for row in rows:
        baseline = like.get((link_key(row), row.get("head_placement", "client")))
        row["like_for_like_baseline"] = baseline["name"] if baseline else None
        row["speedup_like_for_like"] = _ratio(baseline["seconds_per_round"] if baseline else None, row,
                                              id(row) in usable)
        own_no_link = no_link.get(row["entry"])
        row["link_overhead"] = (row["seconds_per_round"] / own_no_link if id(row) in usable and row.get("link")
                                and own_no_link else None)
        _add_bound(row, baseline)
        _add_time_to_target(row, target)
        _add_quality_comparison(row, baseline)
    return rows


def _ratio(baseline_seconds: float | None, row: dict, usable: bool) -> float | None:
    return baseline_seconds / row["seconds_per_round"] if usable and baseline_seconds else None


def _add_bound(row: dict, baseline: dict | None) -> None:
    """stage_bound, bound_fraction (and serial_stage_bound) for fedbiobert runs without a link (module
    docstring). With a link the round is bounded by transfers as much as by compute, which this
    compute bound does not model (the link overhead column covers those runs); FedBERT variants wait
    for the server every step (no pipeline), so have no such bound."""
    row["stage_bound"] = row["bound_fraction"] = row["serial_stage_bound"] = None
    stages, base_stages = row.get("stage_compute"), (baseline or {}).get("stage_compute")
    if row.get("algorithm") != "fedbiobert" or row.get("link") is not None or not stages or not base_stages \
            or not stages["busiest"]:
        return
    row["serial_stage_bound"] = (base_stages["client"] + base_stages["server"]) / stages["busiest"]
    if row.get("speedup_like_for_like") and baseline.get("seconds_per_round"):
        row["stage_bound"] = baseline["seconds_per_round"] / stages["busiest"]
        row["bound_fraction"] = row["speedup_like_for_like"] / row["stage_bound"]


def _add_time_to_target(row: dict, target: float | None) -> None:
    row["target_val_loss"] = target
    reached = [point["train_seconds"] for point in row.get("curve") or []
               if target is not None and point.get("val_loss") is not None and point["val_loss"] <= target]
    row["seconds_to_target"] = reached[0] if reached else None
    row["reached_target"] = bool(reached) if target is not None and row["status"] == "ok" else None


def _add_quality_comparison(row: dict, baseline: dict | None) -> None:
    row["val_loss_vs_baseline"] = row["val_loss_differs"] = None
    if baseline is None or row is baseline or None in (row.get("val_loss"), baseline.get("val_loss")):
        return
    row["val_loss_vs_baseline"] = row["val_loss"] - baseline["val_loss"]
    if row.get("val_loss_se") is not None and baseline.get("val_loss_se") is not None:
        row["val_loss_differs"] = differs(row["val_loss"], row["val_loss_se"], baseline["val_loss"],
                                          baseline["val_loss_se"])


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

"""Memory benchmark: does what a process holds grow with the steps of a round?

    python -m fedbiobert.bench.memory --out bench-memory            # N = 5 and 4N = 20 steps per silo
    python -m fedbiobert.bench.memory --out bench-memory --steps 10 --only 'fedbiobert-*'

Every case runs twice, with N and with 4N batches in its one round (1 server + 1 client process, one
silo), at a width where activations dominate (hidden 512, length 256, batch 16 by default). Each
process reports its peak resident memory (`peak_rss_mb`, the kernel's high-water mark), what its
channel kept alive for pending sends at most, and a server the batches it kept for a later GRAD at
most (metrics.jsonl's round `memory`, roles/base.py). Target: peak memory at 4N within 10% of N for
every case but the diagnostic ones (glibc's malloc left alone; the older fixed 1 MB mmap threshold,
which holds less but costs CPU throughput). The `--server_recompute` case trades a kept graph per
batch for one more forward: its s/step and peak memory, next to the kept-graph case's, are the
trade-off.

Writes OUT/memory.json and OUT/memory.md (and each run's log and metrics under OUT/logs, OUT/runs).
"""
from __future__ import annotations

import argparse
import fnmatch
import sys
from dataclasses import dataclass
from pathlib import Path

from fedbiobert.atomic import write_json_atomically, write_text_atomically
from fedbiobert.bench.matrix import RunSpec
from fedbiobert.bench.runner import REPO, RunnerSettings, run_spec
from fedbiobert.bench.results import machine_info

DEFAULT_DATA_DIR = (REPO / ".." / "shared" / "data" / "pretrain").resolve()
TARGET_GROWTH = 1.10


@dataclass(frozen=True)
class Case:
    name: str
    algorithm: str
    flags: tuple[str, ...] = ()
    diagnostic: bool = False  # shows what a fix prevents; not held to the target


CASES = (
    Case("fedbiobert-client-head", "fedbiobert"),
    Case("fedbiobert-client-head-recompute", "fedbiobert", ("--server_recompute", "True")),
    # glibc left alone (the engine's fix undone: no periodic malloc_trim): how much the heap alone would grow
    Case("fedbiobert-client-head-dynamic-malloc", "fedbiobert", ("--malloc_trim_seconds", "0"), diagnostic=True),
    # the older fix, a fixed 1 MB mmap threshold and no trim: least memory, slower on CPU
    Case("fedbiobert-client-head-mmap-1mb", "fedbiobert", ("--mmap_threshold_mb", "1", "--malloc_trim_seconds", "0"),
         diagnostic=True),
    Case("fedbiobert-server-head", "fedbiobert", ("--head_placement", "server")),
    Case("fedbert-client-head", "fedbert"),
    Case("fedbert-server-head", "fedbert", ("--head_placement", "server")),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m fedbiobert.bench.memory", description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--steps", type=int, default=5, help="N: batches of the short run (the long one has 4N)")
    parser.add_argument("--hidden_size", type=int, default=512)
    parser.add_argument("--max_len", type=int, default=256)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--layers", type=int, default=2, help="encoder layers on each side of the cut")
    parser.add_argument("--only", help="comma-separated case names (globs allowed): " +
                        ", ".join(case.name for case in CASES))
    parser.add_argument("--data_dir", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--cache_dir", type=Path)
    parser.add_argument("--run_timeout", type=float, default=1800.0)
    return parser


def case_spec(case: Case, args: argparse.Namespace, steps: int) -> RunSpec:
    """One run of `case` with `steps` batches in its single round."""
    model = ("--hidden_size", str(args.hidden_size), "--num_attention_heads", str(max(1, args.hidden_size // 64)),
             "--intermediate_size", str(4 * args.hidden_size), "--vocab_size", "8000", "--max_len", str(args.max_len),
             "--batch_size", str(args.batch_size), "--n_comm_rounds", "1", "--val_blocks", "8")
    if case.algorithm == "fedbert":
        model += ("--server_schedule", "parallel")  # one client process, its own server
    return RunSpec(name=f"{case.name}-{steps}", entry=case.name, algorithm=case.algorithm,
                   num_client_encoder=args.layers, num_server_encoder=args.layers, link=None, nproc=2, num_device=1,
                   n_clients=1, num_batch=steps, batch_size=args.batch_size, max_len=args.max_len,
                   model_flags=model + case.flags)


def selected_cases(only: str | None) -> list[Case]:
    if only is None:
        return list(CASES)
    patterns = [part.strip() for part in only.split(",") if part.strip()]
    chosen = [case for case in CASES if any(fnmatch.fnmatchcase(case.name, pattern) for pattern in patterns)]
    if not chosen:
        raise SystemExit(f"python -m fedbiobert.bench.memory: error: --only '{only}' matches no case "
                         f"(accepted: {', '.join(case.name for case in CASES)})")
    return chosen


def measure(case: Case, args: argparse.Namespace, steps: int, settings: RunnerSettings) -> dict:
    """Run one case for `steps` batches; its per-role memory and seconds per step."""
    outcome = run_spec(case_spec(case, args, steps), settings)
    if outcome.status != "ok":
        return {"steps": steps, "status": "failed", "error": outcome.error}
    summary = outcome.summary
    round_seconds = summary["rounds"][0]["round_seconds"]
    return {"steps": steps, "status": "ok", "memory": summary["memory"],
            "seconds_per_step": round(round_seconds / steps, 4)}


def compare(case: Case, short: dict, long: dict) -> dict:
    """Peak memory growth from N to 4N steps, per role."""
    row = {"case": case.name, "short": short, "long": long, "growth": {}, "meets_target": None,
           "diagnostic": case.diagnostic}
    if short["status"] != "ok" or long["status"] != "ok":
        return row
    for role in ("client", "server"):
        row["growth"][role] = round(long["memory"][role]["peak_rss_mb"] / short["memory"][role]["peak_rss_mb"], 4)
    row["meets_target"] = all(growth <= TARGET_GROWTH for growth in row["growth"].values())
    return row


def markdown(rows: list[dict], args: argparse.Namespace, machine: dict) -> str:
    n, long = args.steps, 4 * args.steps
    lines = [f"# Memory: peak resident MB per role at {n} and {long} steps per silo",
             "", f"- model: {args.layers} + {args.layers} layers, hidden {args.hidden_size}, length {args.max_len}, "
             f"batch {args.batch_size}; 1 server + 1 client process; machine: {machine['device']} "
             f"({machine['processor']}), torch {machine['torch']}, commit {machine.get('git_commit')}",
             f"- target: peak at {long} steps within {TARGET_GROWTH - 1:.0%} of peak at {n} steps, every case", "",
             f"| case | client MB @{n} | client MB @{long} | growth | server MB @{n} | server MB @{long} | growth "
             f"| channel peak tensors (client/server) @{long} | kept for GRAD @{long} | s/step @{long} | target |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        if row["meets_target"] is None:
            lines.append(f"| {row['case']} | failed: {row['short'].get('error') or row['long'].get('error')} "
                         "| | | | | | | | | |")
            continue
        short, long_run = row["short"]["memory"], row["long"]["memory"]
        lines.append(
            f"| {row['case']} | {short['client']['peak_rss_mb']:.0f} | {long_run['client']['peak_rss_mb']:.0f} | "
            f"{row['growth']['client']:.3f}x | {short['server']['peak_rss_mb']:.0f} | "
            f"{long_run['server']['peak_rss_mb']:.0f} | {row['growth']['server']:.3f}x | "
            f"{long_run['client'].get('channel_peak_tensors')}/{long_run['server'].get('channel_peak_tensors')} | "
            f"{long_run['server'].get('kept_for_grad_peak')} | {row['long']['seconds_per_step']:.2f} | "
            f"{_verdict(row)} |")
    return "\n".join(lines) + "\n"


def _verdict(row: dict) -> str:
    verdict = "met" if row["meets_target"] else "NOT met"
    return f"{verdict} (diagnostic)" if row["diagnostic"] else verdict


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.steps < 1:
        raise SystemExit(f"python -m fedbiobert.bench.memory: error: --steps {args.steps} must be at least 1")
    cases = selected_cases(args.only)
    args.out.mkdir(parents=True, exist_ok=True)
    settings = RunnerSettings(out_dir=args.out, data_dir=args.data_dir, cache_dir=args.cache_dir,
                              timeout=args.run_timeout)
    rows = []
    for index, case in enumerate(cases, 1):
        print(f"[{index}/{len(cases)}] {case.name}: {args.steps} and {4 * args.steps} steps ...", flush=True)
        row = compare(case, measure(case, args, args.steps, settings), measure(case, args, 4 * args.steps, settings))
        rows.append(row)
        print(f"    growth {row['growth'] or 'n/a (failed)'}", flush=True)
    machine = machine_info()
    write_json_atomically(args.out / "memory.json", {"machine": machine, "rows": rows})
    text = markdown(rows, args, machine)
    write_text_atomically(args.out / "memory.md", text)
    print(text)
    return 0 if all(row["meets_target"] for row in rows if not row["diagnostic"]) else 1


if __name__ == "__main__":
    sys.exit(main())

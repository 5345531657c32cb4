"""Command line of the benchmark: options -> matrix -> one torchrun per run -> results files.

    python -m fedbiobert.bench --quick --out bench/quick
    python -m fedbiobert.bench --preset cpu --out bench/cpu --only 'fedbiobert-*,fedbert-0-6' --links none,50:20
    python -m fedbiobert.bench --preset gpu --out bench/gpu --list

Bad option values end the program with one error line and exit status 2 before any run starts.
Exit status 1 when at least one run failed (the others still run and are reported), 0 otherwise.
"""
from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
import time
from pathlib import Path

from fedbiobert.bench.matrix import (FEDBERT_SCHEDULES, BenchError, RunSpec, algorithm_kinds, build_matrix, link_label,
                                     parse_links, select)
from fedbiobert.bench.presets import PRESETS, PUBLIC_PRESETS, Preset
from fedbiobert.bench.report import write_outputs
from fedbiobert.bench.results import add_speedups, machine_info, merge_repeats, result_row
from fedbiobert.bench.runner import REPO, RunnerSettings, interrupt_on_sigterm, run_spec

DEFAULT_DATA_DIR = (REPO / ".." / "shared" / "data" / "pretrain").resolve()


def say(text: str = "", error: bool = False) -> None:
    """The program's only output to the terminal."""
    print(text, file=sys.stderr if error else sys.stdout, flush=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m fedbiobert.bench", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=_presets_help())
    parser.add_argument("--out", required=True, type=Path, help="output folder (results.json, results.md, "
                        "loss_vs_time.png, machine.json, logs/, runs/)")
    parser.add_argument("--preset", help=f"one of {', '.join(PUBLIC_PRESETS)} (default quick)")
    parser.add_argument("--quick", action="store_true", help="same as --preset quick")
    parser.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # test-sized preset
    parser.add_argument("--data_dir", type=Path, default=DEFAULT_DATA_DIR, help="corpus (default: %(default)s)")
    parser.add_argument("--only", help="comma-separated runs to do: entry names (every link) or NAME@LINK; "
                        "shell globs allowed, e.g. 'fedbiobert-*'")
    parser.add_argument("--nproc", type=int, help="fedbiobert: 1 server + N-1 client processes; fedbert: "
                        "N-1 client processes, each with its own server replica (parallel schedule) or sharing 1 "
                        "server (sequential); fedavg: N client processes; centralized: 1 (default: the preset's, "
                        "2 for quick and cpu: one process per core of a 2-core CPU)")
    parser.add_argument("--fedbert_schedule", default="sequential", help="the servers of the fedbert entries "
                        "(fedbert-0-L-parallel always has a replica per client process): sequential (one shared "
                        "server, the same processes as fedbiobert) or parallel (accepted: "
                        f"{', '.join(FEDBERT_SCHEDULES)}; default sequential)")
    parser.add_argument("--links", help="comma-separated link settings: none or MBIT_PER_S:LATENCY_MS "
                        "(default: the preset's, e.g. none,100:5)")
    parser.add_argument("--run_flags", default="", help="run.py options added to every run (quoted), e.g. "
                        "'--server_optimizer fedadam --server_lr 0.01'; the runs check them as usual")
    parser.add_argument("--cache_dir", type=Path, help="tokenizer and token cache given to every run")
    parser.add_argument("--run_timeout", type=float, help="seconds one run may take (default: the preset's)")
    parser.add_argument("--keep_models", action="store_true", help="keep each run's round exports and "
                        "checkpoint (default: deleted after the run; metrics and summary stay)")
    parser.add_argument("--repeat", type=int, default=1, help="run the whole matrix this many times over, "
                        "interleaved, and report each run's median s/round: steadier ratios on a shared, noisy "
                        "machine (default 1)")
    parser.add_argument("--list", action="store_true", help="print the matrix and its commands, run nothing")
    return parser


def _presets_help() -> str:
    lines = ["presets:"]
    for name in PUBLIC_PRESETS:
        p = PRESETS[name]
        lines.append(f"  {name:6} {p.description}: {p.num_layers} layers, hidden {p.hidden_size}, seq {p.max_len}, "
                     f"batch {p.batch_size}, {p.n_comm_rounds} rounds x {p.n_clients} clients x {p.num_batch} "
                     f"batches, links {p.links}{', --on_cuda True' if p.on_cuda else ''}")
    return "\n".join(lines) + "\n"


def choose_preset(args: argparse.Namespace) -> Preset:
    named = [name for name, flag in (("quick", args.quick), ("tiny", args.tiny)) if flag]
    if args.preset is not None:
        if args.preset not in PUBLIC_PRESETS:
            raise BenchError(f"--preset '{args.preset}' is unknown (accepted: {', '.join(PUBLIC_PRESETS)})")
        named.append(args.preset)
    if len(set(named)) > 1:
        raise BenchError(f"presets {' and '.join(sorted(set(named)))} were both asked for (give one)")
    preset = PRESETS[named[0] if named else "quick"]
    if args.run_flags:  # e.g. '--server_optimizer fedadam --server_lr 0.01': the same for every run
        preset = dataclasses.replace(preset, extra_flags=preset.extra_flags + tuple(shlex.split(args.run_flags)))
    return preset


def plan(args: argparse.Namespace) -> tuple[Preset, list[RunSpec], RunnerSettings]:
    """Every check of the options, before anything runs. Raises BenchError."""
    preset = choose_preset(args)
    links = parse_links(args.links if args.links is not None else preset.links)
    nproc = args.nproc if args.nproc is not None else preset.nproc
    specs = select(build_matrix(preset, links, nproc, algorithm_kinds(args.fedbert_schedule)), args.only)
    if not args.data_dir.exists():
        raise BenchError(f"--data_dir '{args.data_dir}' does not exist (accepted: a corpus file or folder)")
    if args.out.exists() and not args.out.is_dir():
        raise BenchError(f"--out '{args.out}' exists and is not a folder")
    if args.repeat < 1:
        raise BenchError(f"--repeat {args.repeat} must be at least 1")
    timeout = args.run_timeout if args.run_timeout is not None else preset.run_timeout
    if timeout <= 0:
        raise BenchError(f"--run_timeout {timeout:g} must be positive")
    settings = RunnerSettings(out_dir=args.out.resolve(), data_dir=args.data_dir.resolve(),
                              cache_dir=args.cache_dir.resolve() if args.cache_dir else None, timeout=timeout,
                              keep_models=args.keep_models)
    return preset, specs, settings


def describe(spec: RunSpec) -> str:
    return (f"{spec.name}: {spec.algorithm} {spec.num_client_encoder}-{spec.num_server_encoder}, "
            f"{spec.nproc} process(es), {spec.n_clients} client(s) x {spec.num_batch} batches, "
            f"{spec.tokens_per_round:,} tokens/round, link {link_label(spec.link)}")


def run_all(specs: list[RunSpec], settings: RunnerSettings, preset: Preset, command: str,
            repeats: int = 1) -> list[dict]:
    """Every run, `repeats` passes over the matrix (pass k > 1 writes runs/NAME.rK and logs/NAME.rK.log)."""
    machine = machine_info()
    passes: dict[str, list[dict]] = {}
    for repeat in range(1, repeats + 1):
        for index, spec in enumerate(specs, 1):
            counter = f"[{index}/{len(specs)}]" if repeats == 1 else f"[pass {repeat}/{repeats}, {index}/{len(specs)}]"
            say(f"{counter} {describe(spec)}")
            label = spec.name if repeat == 1 else f"{spec.name}.r{repeat}"
            outcome = run_spec(spec, settings, on_round=_round_progress, label=label)
            passes.setdefault(spec.name, []).append(result_row(spec, outcome))
            rows = add_speedups([merge_repeats(found) for found in passes.values()])
            merged = next(row for row in rows if row["name"] == spec.name)
            _run_done(passes[spec.name][-1], merged)
            write_outputs(settings.out_dir, rows, machine, preset, command, plot=False)
    write_outputs(settings.out_dir, rows, machine, preset, command, plot=True)
    return rows


def _round_progress(event: dict) -> None:
    note = " (warm-up, not counted)" if event.get("round") == 1 else ""
    val = event.get("val_loss")
    say(f"    round {event.get('round')}: {event.get('round_seconds', 0):.2f} s{note}"
        + (f", val loss {val:.4f}" if val is not None else ""))


def _run_done(row: dict, merged: dict) -> None:
    """This pass's figures; the speedup is the merged one (medians over the passes so far)."""
    if row["status"] != "ok":
        say(f"bench: error: run {row['name']} failed: {row['error']} (log: {row['log']})", error=True)
        return
    speedup = merged["speedup_vs_fedbert"]
    so_far = f" (median of {merged['passes']} passes)" if merged.get("passes", 1) > 1 else ""
    say(f"    done in {row['process_seconds']:.1f} s: {_fmt(row['seconds_per_round'], '.2f')} s/round, "
        f"{_fmt(row['tokens_per_second'], ',.0f')} tokens/s, val perplexity {_fmt(row['val_perplexity'], '.1f')}"
        + (f", {speedup:.2f}x fedbert 0-L{so_far}" if speedup is not None else ""))


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        preset, specs, settings = plan(args)
    except BenchError as error:
        parser.exit(2, f"{parser.prog}: error: {error}\n")
    command = "python -m fedbiobert.bench " + shlex.join(argv)
    if args.list:
        for spec in specs:
            say(describe(spec))
            say("    run.py " + shlex.join(spec.flags()))
        return 0
    settings.out_dir.mkdir(parents=True, exist_ok=True)
    interrupt_on_sigterm()
    say(f"preset {preset.name}: {len(specs)} run(s){f' x {args.repeat} passes' if args.repeat > 1 else ''}, "
        f"outputs in {settings.out_dir}")
    started = time.time()
    try:
        rows = run_all(specs, settings, preset, command, args.repeat)
    except KeyboardInterrupt:
        say(f"bench: error: interrupted; the runs finished so far are in {settings.out_dir}", error=True)
        return 130
    failed = [row["name"] for row in rows if row["status"] != "ok"]
    say(f"{len(rows) - len(failed)}/{len(rows)} run(s) done in {time.time() - started:.0f} s; "
        f"see {settings.out_dir / 'results.md'}")
    if failed:
        say(f"bench: error: {len(failed)} run(s) failed: {', '.join(failed)}", error=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

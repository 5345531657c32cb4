"""`python -m fedbiobert.experiments parity`: FedBioBERT's speed-up at downstream parity.

From one general model (default: models/minilm-l6, fetched by scripts/get_base_model.sh), the same corpus,
token budget, schedule and seed: centralized and FedAvg continual pre-training, FedBERT as published (0-L,
head on the client) and at FedBioBERT's cut, FedBioBERT with the head on the client and on the server;
then every run's final export (and every K-th round's with --every K), the general model itself and a
random initialisation are fine-tuned and probed on each task with every seed.

    python -m fedbiobert.experiments parity --preset small --out runs/parity

OUT gets results.json, results.md, parity.png, runs/ (pre-training outputs), downstream/ (one fine-tuning
record per model, task and mode) and logs/. `--resume` skips every finished run and job.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import shutil
import time
from pathlib import Path

from fedbiobert.atomic import write_json_atomically
from fedbiobert.bench.matrix import BenchError, RunSpec
from fedbiobert.bench.results import add_speedups, machine_info, result_row
from fedbiobert.bench.runner import REPO, RunnerSettings, run_spec
from fedbiobert.experiments.downstream import finished_record, run_job
from fedbiobert.experiments.parity_plan import (GENERAL, PRESETS, PUBLIC_PRESETS, RANDOM, choose_tasks, control_jobs,
                                                export_jobs, pretraining_specs, read_model_shape, with_overrides)
from fedbiobert.experiments.parity_report import downstream_entry, write_results
from fedbiobert.experiments.progress import say

DEFAULT_DATA_ROOT = REPO.parent / "shared" / "data"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", default="small", help=f"one of {', '.join(PUBLIC_PRESETS)} (default small)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--init_from", default=str(REPO / "models" / "minilm-l6"),
                        help="the general model every run starts from (an HF BERT/RoBERTa folder)")
    parser.add_argument("--data_root", default=os.environ.get("FEDBIOBERT_SHARED_DATA", str(DEFAULT_DATA_ROOT)),
                        help="folder with pretrain/, ner/ and classification/ (default ../shared/data)")
    parser.add_argument("--cut", type=int, help="client layers of the split runs (default: half the model)")
    parser.add_argument("--only", help="pre-training runs to do, comma-separated names or globs (e.g. 'fedbert-*')")
    parser.add_argument("--tasks", help="downstream tasks, comma-separated (default: the preset's)")
    parser.add_argument("--seeds", help="fine-tuning seeds (default 1,2,3)")
    parser.add_argument("--modes", default="finetune,probe", help="finetune, probe or both (default both)")
    parser.add_argument("--every", type=int, help="also evaluate every K-th round's export")
    parser.add_argument("--lr", type=float, help="pre-training peak learning rate (default: the preset's)")
    parser.add_argument("--head_warmup_fraction", type=float, help="share of each run's steps that train only the "
                        "new MLM heads (default: the preset's)")
    parser.add_argument("--threads", type=int, help="torch threads of each fine-tune (default: torch's)")
    parser.add_argument("--cache_dir", help="token cache of the pre-training runs (default: the engine's)")
    parser.add_argument("--resume", action="store_true", help="keep what OUT already holds; skip finished work")


@dataclasses.dataclass
class Plan:
    preset: object
    specs: list[RunSpec]
    tasks: tuple
    modes: set[str]
    out: Path
    data_root: Path
    init_from: Path
    cut: int


def make_plan(args: argparse.Namespace) -> Plan:
    """Every input checked before any work; BenchError (one line) for the first bad one."""
    if args.preset not in PRESETS:
        raise BenchError(f"--preset '{args.preset}' is unknown (accepted: {', '.join(PUBLIC_PRESETS)})")
    preset = with_overrides(PRESETS[args.preset], seeds=args.seeds, lr=args.lr,
                            head_warmup_fraction=args.head_warmup_fraction)
    init_from, data_root, out = Path(args.init_from), Path(args.data_root), Path(args.out)
    _check_inputs(args, init_from, data_root, out)
    layers = read_model_shape(init_from)["num_hidden_layers"]
    cut = layers // 2 if args.cut is None else args.cut
    specs = pretraining_specs(preset, init_from, cut, args.only)
    tasks = choose_tasks(preset, args.tasks)
    for task in tasks:
        if not (data_root / task.folder).is_dir():
            raise BenchError(f"--data_root '{data_root}' has no {task.folder}/ (accepted: the shared data folder)")
    modes = {part.strip() for part in args.modes.split(",") if part.strip()}
    if not modes or not modes <= {"finetune", "probe"}:
        raise BenchError(f"--modes '{args.modes}' (accepted: finetune, probe or finetune,probe)")
    return Plan(preset, specs, tasks, modes, out, data_root, init_from, cut)


def _check_inputs(args, init_from: Path, data_root: Path, out: Path) -> None:
    if not (init_from / "config.json").is_file():
        raise BenchError(f"--init_from '{init_from}' is not an HF model folder (run bash scripts/get_base_model.sh "
                         "for the default, or give a BERT/RoBERTa folder)")
    if not (data_root / "pretrain").is_dir():
        raise BenchError(f"--data_root '{data_root}' has no pretrain/ (accepted: the shared data folder)")
    if args.every is not None and args.every < 1:
        raise BenchError(f"--every {args.every} (accepted: an integer >= 1)")
    if (out / "results.json").exists() and not args.resume:
        raise BenchError(f"--out '{out}' already holds an experiment (pass --resume to continue it, or choose "
                         "another folder)")


def pretrain_all(plan: Plan, args) -> list[dict]:
    settings = RunnerSettings(out_dir=plan.out, data_dir=plan.data_root / "pretrain",
                              cache_dir=Path(args.cache_dir) if args.cache_dir else None,
                              timeout=plan.preset.run_timeout, keep_models=True)
    rows = []
    for index, spec in enumerate(plan.specs, 1):
        saved = plan.out / "pretrain" / f"{spec.name}.json"
        if args.resume and saved.is_file():
            rows.append(json.loads(saved.read_text(encoding="utf-8")))
            say(f"[pre-train {index}/{len(plan.specs)}] {spec.name}: done before, skipped")
            continue
        say(f"[pre-train {index}/{len(plan.specs)}] {spec.name}: {spec.nproc} process(es), "
            f"{spec.tokens_per_round * plan.preset.n_comm_rounds:,} tokens")
        outcome = run_spec(spec, settings, on_round=_round_progress)
        row = result_row(spec, outcome)
        _keep_exports(outcome.run_dir, plan.preset.n_comm_rounds, args.every)
        say(f"    {spec.name}: {row['status']} in {outcome.seconds:.0f} s"
            + (f", val loss {row['val_loss']:.4f}" if row.get("val_loss") is not None else f": {row['error']}"))
        if row["status"] == "ok":
            write_json_atomically(saved, row, parents=True)  # atomic: --resume trusts every file it finds
        rows.append(row)
    return add_speedups(rows)


def _round_progress(event: dict) -> None:
    val = event.get("val_loss")
    say(f"    round {event.get('round')}: {event.get('round_seconds', 0):.1f} s"
        + (f", val loss {val:.4f}" if val is not None else ""))


def exported_rounds(last_round: int, every: int | None) -> list[int]:
    rounds = {last_round}
    if every:
        rounds |= set(range(every, last_round + 1, every))
    return sorted(rounds)


def _keep_exports(run_dir: Path, last_round: int, every: int | None) -> None:
    """Keep the exports the downstream jobs read; drop the resume checkpoint (optimizer-free but large)."""
    wanted = {f"round{number}" for number in exported_rounds(last_round, every)}
    for path in list(run_dir.glob("round[0-9]*")) + [run_dir / "checkpoint"]:
        if path.is_dir() and path.name not in wanted:
            shutil.rmtree(path)


def downstream_all(plan: Plan, rows: list[dict], args, write) -> list[dict]:
    jobs = control_jobs(plan.preset, plan.init_from, plan.tasks)
    for row in rows:
        if row["status"] == "ok":
            rounds = exported_rounds(plan.preset.n_comm_rounds, args.every)
            jobs += export_jobs(row["name"], Path(row["output_dir"]), rounds, plan.tasks)
    jobs = sorted((job for job in jobs if job.mode in plan.modes), key=lambda job: _priority(job, rows))
    entries = []
    for index, job in enumerate(jobs, 1):
        record = finished_record(job, plan.out) if args.resume else None
        label = f"[downstream {index}/{len(jobs)}] {job.model_name} / {job.task.name} / {job.mode}"
        if record is None:
            record, error, seconds = run_job(job, plan.preset, plan.data_root, plan.out, args.threads)
            if error:
                say(f"{label}: failed: {error}", error=True)
                continue
            say(f"{label}: {job.task.metric} {record['mean'][job.task.metric]:.4f} ± "
                f"{record['std'][job.task.metric]:.4f} ({seconds:.0f} s)")
        else:
            say(f"{label}: done before, skipped")
        entries.append(downstream_entry(record, job.model_name, job.task, job.mode, job.round))
        write(entries, plot=False)
    return entries


def _priority(job, rows: list[dict]) -> tuple:
    """The comparisons the experiment exists for first, so an interrupted one (or one cut short) holds them:
    the general model, FedBERT as published, FedBioBERT's runs, the other pre-training runs, then the
    random initialisation; within a model, its rounds in order and full fine-tuning before the probes."""
    baseline = next((row["name"] for row in rows if row.get("baseline")), None)
    method = job.model_name.split("@")[0]
    rank = (0 if method == GENERAL else 1 if method == baseline else 2 if method.startswith("fedbiobert")
            else 4 if method == RANDOM else 3)
    order = [row["name"] for row in rows]
    return rank, order.index(method) if method in order else 0, job.round or 0, job.probe


def run(args: argparse.Namespace, argv: list[str]) -> int:
    plan = make_plan(args)
    plan.out.mkdir(parents=True, exist_ok=True)
    header = {"experiment": "parity", "preset": dataclasses.asdict(plan.preset),
              "command": "python -m fedbiobert.experiments " + shlex.join(argv), "machine": machine_info(),
              "init_from": str(plan.init_from), "cut": plan.cut, "data_root": str(plan.data_root)}
    say(f"parity ({plan.preset.name}): {len(plan.specs)} pre-training run(s), tasks "
        f"{', '.join(task.name for task in plan.tasks)}, outputs in {plan.out}")
    started = time.time()
    rows = pretrain_all(plan, args)
    write_results(plan.out, header, rows, [], plot=False)

    def write(entries, plot):
        write_results(plan.out, header, rows, entries, plot)
    entries = downstream_all(plan, rows, args, write)
    write(entries, plot=True)
    failed = [row["name"] for row in rows if row["status"] != "ok"]
    say(f"parity done in {time.time() - started:.0f} s; see {plan.out / 'results.md'} and {plan.out / 'parity.png'}")
    if failed:
        say(f"experiments: error: pre-training failed for {', '.join(failed)}", error=True)
    return 1 if failed else 0

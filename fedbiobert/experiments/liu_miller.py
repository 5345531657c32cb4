"""`python -m fedbiobert.experiments liu_miller`: Liu & Miller 2020's Table 1 on this engine.

From one general model (--init_from): continual pre-training centralized, with FedAvg, FedBERT (as
published: 0-L, head on the client) and FedBioBERT (the cut at half the model, head on the client), on
equal tokens (parity's runs, the bench's runner); then the general model and every pre-trained model
are fine-tuned on NCBI-disease and BC5CDR, centralized and with FedAvg over 5 IID silos, with seeds 1, 2,
3: entity-level precision, recall and F1 (seqeval's conlleval mode). results.md states whether the paper's
pattern holds: federated pre-training close to centralized, both above the general model; federated
fine-tuning a little below centralized.

    python -m fedbiobert.experiments liu_miller --preset small --out runs/liu-miller

OUT gets results.json, results.md, liu_miller.png, runs/ (pre-training outputs), downstream/ (one
fine-tuning record per model, task and mode) and logs/. `--resume` skips every finished run and job.
"""
from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

from fedbiobert.bench.matrix import BenchError
from fedbiobert.experiments.common import (PRETRAINING, add_common_arguments, add_pretraining_arguments,
                                           check_common, check_cut, header, pretrain)
from fedbiobert.experiments.downstream import finished_record, run_job
from fedbiobert.experiments.liu_miller_plan import (CONDITIONS, MODES, PRESETS, PUBLIC_PRESETS, choose,
                                                    condition_of, entries_of, jobs)
from fedbiobert.experiments.liu_miller_report import job_entry, write_results
from fedbiobert.experiments.parity_plan import GENERAL, pretraining_specs
from fedbiobert.experiments.progress import say


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser, PUBLIC_PRESETS)
    add_pretraining_arguments(parser)
    parser.add_argument("--conditions", help=f"pre-training conditions, comma-separated (default all: "
                        f"{GENERAL}, {', '.join(CONDITIONS)})")
    parser.add_argument("--tasks", help="ncbi_disease, bc5cdr or both (default both)")
    parser.add_argument("--modes", help="fine-tuning modes: centralized, federated or both (default both)")
    parser.add_argument("--seeds", help="fine-tuning seeds (default: the preset's, 1,2,3)")


def make_plan(args):
    """(preset, conditions, tasks, modes, pre-training specs); every input checked before any work."""
    check_common(args, PRESETS, ("pretrain",))
    preset = PRESETS[args.preset]
    if args.seeds is not None:
        try:
            assert [int(part) for part in args.seeds.split(",") if part.strip()]
        except (ValueError, AssertionError):
            raise BenchError(f"--seeds '{args.seeds}' (accepted: comma-separated integers, e.g. 1,2,3)") from None
        preset = replace(preset, seeds=args.seeds)
    conditions = choose(args.conditions, (GENERAL, *CONDITIONS), "--conditions")
    names = tuple(task.name for task in preset.tasks)
    tasks = tuple(task for task in preset.tasks if task.name in choose(args.tasks, names, "--tasks"))
    modes = choose(args.modes, MODES, "--modes")
    for task in tasks:
        if not (Path(args.data_root) / task.folder).is_dir():
            raise BenchError(f"--data_root '{args.data_root}' has no {task.folder}/ (accepted: the shared data "
                             "folder)")
    specs = []
    if entries_of(conditions):
        budget = replace(PRETRAINING[preset.pretraining], entries=entries_of(conditions))
        specs = pretraining_specs(budget, Path(args.init_from), check_cut(args), None)
    return preset, conditions, tasks, modes, specs


def finetune_all(planned, preset, args, out: Path, write) -> tuple[list[dict], list[str]]:
    entries, failed = [], []
    for index, job in enumerate(planned, 1):
        label = f"[fine-tune {index}/{len(planned)}] {job.model_name} / {job.task.name} / {job.mode}"
        record = finished_record(job, out) if args.resume else None
        if record is None:
            record, error, seconds = run_job(job, preset, Path(args.data_root), out, args.threads)
            if error:
                say(f"{label}: failed: {error}", error=True)
                failed.append(f"{job.model_name}/{job.task.name}/{job.mode}")
                continue
            mean, std = record["mean"], record["std"]
            say(f"{label}: P {mean['conlleval_precision']:.3f} R {mean['conlleval_recall']:.3f} F1 "
                f"{mean['conlleval_f1']:.3f} ± {std['conlleval_f1']:.3f} ({seconds:.0f} s)")
        else:
            say(f"{label}: done before, skipped")
        entries.append(job_entry(record, job))
        write(entries, plot=False)
    return entries, failed


def run(args: argparse.Namespace, argv: list[str]) -> int:
    preset, conditions, tasks, modes, specs = make_plan(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    say(f"liu_miller ({preset.name}): {len(specs)} pre-training run(s), conditions {', '.join(conditions)}, "
        f"tasks {', '.join(task.name for task in tasks)}, modes {', '.join(modes)}; outputs in {out}")
    models = {GENERAL: Path(args.init_from)} if GENERAL in conditions else {}
    if specs:
        exports = pretrain(PRETRAINING[preset.pretraining], specs, args, out)
        models.update({condition_of(name): path for name, path in exports.items()})
    missing = [name for name in conditions if name not in models]
    head = header("liu_miller", preset, argv, init_from=args.init_from, data_root=args.data_root,
                  pretraining=PRETRAINING[preset.pretraining].description,
                  pretrained={name: str(path) for name, path in models.items()})

    def write(entries, plot):
        write_results(out, head, entries, plot)
    planned = jobs(preset, models, tasks, modes)
    say(f"{len(planned)} fine-tuning jobs x {len(preset.seeds.split(','))} seed(s)")
    entries, failed = finetune_all(planned, preset, args, out, write)
    write(entries, plot=True)
    say(f"liu_miller done in {time.time() - started:.0f} s; see {out / 'results.md'} and {out / 'liu_miller.png'}")
    if missing or failed:
        say(f"experiments: error: failed: {', '.join(missing + failed)} (logs in {out / 'logs'})", error=True)
    return 1 if missing or failed else 0

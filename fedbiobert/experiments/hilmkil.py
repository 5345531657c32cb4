"""`python -m fedbiobert.experiments hilmkil`: federated fine-tuning as the silos multiply (Hilmkil et al. 2021).

The general model (--init_from) is fine-tuned with FedAvg on medical-abstracts classification (5 classes)
over 1, 2, 4, 8, 16 and 32 silos, drawn IID (`--split random`) and with Dirichlet label skew (`--split
dirichlet`, alpha 0.5), for a fixed number of rounds (one local epoch a round, no early stopping); one
silo is centralized training and is run once for both splits. Reported: the test accuracy after the
rounds (the fine-tuner's: the model of the best dev round), the dev accuracy of every round, and the
rounds each run took to reach 90% of the one-silo run's final dev accuracy (or "not reached").

    python -m fedbiobert.experiments hilmkil --preset small --out runs/hilmkil

OUT gets results.json, results.md, hilmkil.png (dev accuracy per round, a line per silo count; one panel
per split), downstream/ (one fine-tuning record per run) and logs/. `--resume` skips finished runs.
"""
from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, replace
from pathlib import Path

from fedbiobert.bench.matrix import BenchError
from fedbiobert.experiments.common import ModeJob, add_common_arguments, check_common, header
from fedbiobert.experiments.downstream import finished_record, run_job
from fedbiobert.experiments.hilmkil_report import run_entry, write_results
from fedbiobert.experiments.parity_plan import GENERAL, Task
from fedbiobert.experiments.progress import say
from fedbiobert.finetune.silos import MAX_SILOS

SPLIT_NAMES = {"random": "iid", "dirichlet": "dirichlet"}


@dataclass(frozen=True)
class HilmkilPreset:
    name: str
    description: str
    task: Task                       # epochs unused: federated runs take `rounds`
    rounds: int
    silos: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
    splits: tuple[str, ...] = ("random", "dirichlet")
    dirichlet_alpha: float = 0.5
    dev_ratio: float = 0.2           # medical abstracts have no dev file: this share of train is held out
    finetune_lr: float = 1e-4
    seeds: str = "1"
    probe_lr: float = 3e-3           # unused (no probes); downstream.finetune_command reads it
    probe_epochs: int = 1


_ABSTRACTS = "classification/medical_abstracts"
PRESETS = {
    "tiny": HilmkilPreset("tiny", "test-sized", Task("medical_abstracts", _ABSTRACTS, "accuracy", 64, 32, 1,
                                                     max_len=32), rounds=2, silos=(1, 2, 4)),
    # small: measured, 4 rounds at lr 1e-4 left every run of 4+ silos on the majority class (docs/experiments.md)
    "small": HilmkilPreset("small", "2-core CPU, about 16 minutes: the first 400 training abstracts (320 train, "
                           "80 dev), 300 test abstracts, 64 sub-tokens, 8 rounds, lr 3e-4, seed 1",
                           Task("medical_abstracts", _ABSTRACTS, "accuracy", 400, 300, 1, max_len=64), rounds=8,
                           finetune_lr=3e-4),
    "full": HilmkilPreset("full", "GPU or a long CPU run: every abstract (1,848 train, 462 dev, 578 test), 256 "
                          "sub-tokens, 20 rounds, seeds 1, 2, 3",
                          Task("medical_abstracts", _ABSTRACTS, "accuracy", None, None, 1, max_len=256), rounds=20,
                          finetune_lr=5e-5, seeds="1,2,3"),
}
PUBLIC_PRESETS = ("small", "full")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser, PUBLIC_PRESETS)
    parser.add_argument("--silos", help="silo counts, comma-separated (default 1,2,4,8,16,32)")
    parser.add_argument("--splits", help="random (IID), dirichlet or both (default both)")
    parser.add_argument("--rounds", type=int, help="FedAvg rounds of every run (default: the preset's)")
    parser.add_argument("--dirichlet_alpha", type=float, help="label skew of the dirichlet split (default 0.5)")
    parser.add_argument("--seeds", help="fine-tuning seeds (default: the preset's)")
    parser.add_argument("--lr", type=float, help="fine-tuning peak learning rate (default: the preset's)")


def _int_list(text: str, flag: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        values = ()
    if not values or any(not 1 <= value <= MAX_SILOS for value in values):
        raise BenchError(f"{flag} '{text}' (accepted: comma-separated integers in 1..{MAX_SILOS})")
    return tuple(sorted(set(values)))


def make_preset(args) -> HilmkilPreset:
    """The preset with the command line's changes; BenchError (one line) for the first bad value."""
    check_common(args, PRESETS, (_ABSTRACTS,))
    preset = PRESETS[args.preset]
    changes = {}
    if args.silos is not None:
        changes["silos"] = _int_list(args.silos, "--silos")
    if args.splits is not None:
        splits = tuple(part.strip() for part in args.splits.split(",") if part.strip())
        if not splits or not set(splits) <= set(SPLIT_NAMES):
            raise BenchError(f"--splits '{args.splits}' (accepted: random, dirichlet or random,dirichlet)")
        changes["splits"] = splits
    if args.rounds is not None:
        if args.rounds < 1:
            raise BenchError(f"--rounds {args.rounds} (accepted: an integer >= 1)")
        changes["rounds"] = args.rounds
    if args.dirichlet_alpha is not None:
        if args.dirichlet_alpha <= 0:
            raise BenchError(f"--dirichlet_alpha {args.dirichlet_alpha} (accepted: > 0)")
        changes["dirichlet_alpha"] = args.dirichlet_alpha
    if args.seeds is not None:
        _seeds(args.seeds)
        changes["seeds"] = args.seeds
    if args.lr is not None:
        if args.lr <= 0:
            raise BenchError(f"--lr {args.lr} (accepted: > 0)")
        changes["finetune_lr"] = args.lr
    return replace(preset, **changes)


def _seeds(text: str) -> None:
    try:
        assert [int(part) for part in text.split(",") if part.strip()]
    except (ValueError, AssertionError):
        raise BenchError(f"--seeds '{text}' (accepted: comma-separated integers, e.g. 1,2,3)") from None


def run_label(split: str, silos: int) -> str:
    return "1-silo" if silos == 1 else f"{SPLIT_NAMES[split]}-{silos:02d}"


def jobs(preset: HilmkilPreset, init_from: Path) -> list[ModeJob]:
    """One FedAvg fine-tune per (split, silo count); one silo once (both splits give the same silo)."""
    planned, seen = [], set()
    for split in preset.splits:
        for silos in preset.silos:
            label = run_label(split, silos)
            if label in seen:
                continue
            seen.add(label)
            extra = ("--mode", "federated", "--n_clients", str(silos), "--split", split, "--dirichlet_alpha",
                     f"{preset.dirichlet_alpha:g}", "--rounds", str(preset.rounds), "--local_epochs", "1",
                     "--patience", "0", "--dev_ratio", f"{preset.dev_ratio:g}")
            planned.append(ModeJob(GENERAL, str(init_from), preset.task, False, extra=extra, label=label))
    return planned


def run(args: argparse.Namespace, argv: list[str]) -> int:
    preset = make_preset(args)
    out, data_root = Path(args.out), Path(args.data_root)
    out.mkdir(parents=True, exist_ok=True)
    planned = jobs(preset, Path(args.init_from))
    head = header("hilmkil", preset, argv, init_from=args.init_from, data_root=str(data_root))
    say(f"hilmkil ({preset.name}): {len(planned)} federated fine-tunes x {preset.rounds} rounds, outputs in {out}")
    started, entries, failed = time.time(), [], []
    for index, job in enumerate(planned, 1):
        label = f"[run {index}/{len(planned)}] {job.mode}"
        record = finished_record(job, out) if args.resume else None
        if record is None:
            record, error, seconds = run_job(job, preset, data_root, out, args.threads)
            if error:
                say(f"{label}: failed: {error}", error=True)
                failed.append(job.mode)
                continue
            say(f"{label}: test accuracy {record['mean']['accuracy']:.4f} ({seconds:.0f} s)")
        else:
            say(f"{label}: done before, skipped")
        entries.append(run_entry(record, job.mode))
        write_results(out, head, preset, entries, plot=False)
    write_results(out, head, preset, entries, plot=True)
    say(f"hilmkil done in {time.time() - started:.0f} s; see {out / 'results.md'} and {out / 'hilmkil.png'}")
    if failed:
        say(f"experiments: error: fine-tuning failed for {', '.join(failed)} (logs in {out / 'logs'})", error=True)
    return 1 if failed else 0

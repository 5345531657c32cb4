"""What the seed papers' experiments (liu_miller, hilmkil, attention) share: their common options and
checks, the continual pre-trainings (parity's plan and runner, so one harness), the downstream job with a
fine-tuning mode, and the results header.

Every input is checked before any work (`BenchError`: one line, exit status 2); `--resume` keeps what
OUT holds: a pre-training run with its saved row and a downstream job with its record are skipped.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

from fedbiobert.bench.matrix import BenchError
from fedbiobert.bench.results import machine_info
from fedbiobert.bench.runner import REPO
from fedbiobert.experiments.parity_plan import DownstreamJob, ParityPreset, read_model_shape

DEFAULT_DATA_ROOT = REPO.parent / "shared" / "data"
DEFAULT_GENERAL = REPO / "models" / "minilm-l6"

# The continual pre-trainings' budgets (parity's plan with fewer tokens on the small preset: these experiments
# fine-tune many models, so the 2-core CPU spends its half hour there). Entries are chosen per experiment.
PRETRAINING = {
    "tiny": ParityPreset(  # hidden: for tests only
        name="tiny", description="test-sized", n_clients=2, n_comm_rounds=1, num_batch=2, batch_size=4, max_len=64,
        lr=1e-3, val_blocks=8, head_warmup_fraction=0.0, tasks=(), finetune_lr=1e-3, probe_lr=3e-3, probe_epochs=1,
        run_timeout=300),
    "small": ParityPreset(
        name="small", description="2 silos x 2 rounds x 10 batches of 16 x 128 tokens (81,920 tokens a run)",
        n_clients=2, n_comm_rounds=2, num_batch=10, batch_size=16, max_len=128, lr=1e-4, val_blocks=64,
        head_warmup_fraction=0.0, tasks=(), finetune_lr=1e-4, probe_lr=3e-3, probe_epochs=1, run_timeout=900),
    "full": ParityPreset(
        name="full", description="GPU (--on_cuda True): 5 silos x 10 rounds x 500 batches of 32 x 128 tokens",
        n_clients=5, n_comm_rounds=10, num_batch=500, batch_size=32, max_len=128, lr=5e-5, val_blocks=2048,
        head_warmup_fraction=0.0, tasks=(), finetune_lr=3e-5, probe_lr=3e-3, probe_epochs=1, on_cuda=True,
        run_timeout=24 * 3600),
}


def add_common_arguments(parser: argparse.ArgumentParser, presets) -> None:
    parser.add_argument("--preset", default="small", help=f"one of {', '.join(presets)} (default small)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--init_from", default=str(DEFAULT_GENERAL),
                        help="the general model (an HF BERT/RoBERTa folder; default models/minilm-l6, "
                        "from bash scripts/get_base_model.sh)")
    parser.add_argument("--data_root", default=os.environ.get("FEDBIOBERT_SHARED_DATA", str(DEFAULT_DATA_ROOT)),
                        help="folder with pretrain/, ner/ and classification/ (default ../shared/data)")
    parser.add_argument("--threads", type=int, help="torch threads of each fine-tune (default: torch's)")
    parser.add_argument("--resume", action="store_true", help="keep what OUT already holds; skip finished work")


def add_pretraining_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cut", type=int, help="client layers of the split runs (default: half the model)")
    parser.add_argument("--cache_dir", help="token cache of the pre-training runs (default: the engine's)")


def check_common(args, presets: dict, folders: tuple[str, ...]) -> None:
    """The preset, the general model, the data folders the experiment reads and OUT; BenchError if bad."""
    if args.preset not in presets:
        public = ", ".join(name for name in presets if name != "tiny")  # tiny: for the tests, not advertised
        raise BenchError(f"--preset '{args.preset}' is unknown (accepted: {public})")
    init_from, data_root, out = Path(args.init_from), Path(args.data_root), Path(args.out)
    if not (init_from / "config.json").is_file():
        raise BenchError(f"--init_from '{init_from}' is not an HF model folder (run bash scripts/get_base_model.sh "
                         "for the default, or give a BERT/RoBERTa folder)")
    for folder in folders:
        if not (data_root / folder).is_dir():
            raise BenchError(f"--data_root '{data_root}' has no {folder}/ (accepted: the shared data folder)")
    if args.threads is not None and args.threads < 1:
        raise BenchError(f"--threads {args.threads} (accepted: an integer >= 1)")
    if (out / "results.json").exists() and not args.resume:
        raise BenchError(f"--out '{out}' already holds an experiment (pass --resume to continue it, or choose "
                         "another folder)")


def check_cut(args) -> int:
    layers = read_model_shape(Path(args.init_from))["num_hidden_layers"]
    cut = layers // 2 if args.cut is None else args.cut
    if not 1 <= cut < layers:
        raise BenchError(f"--cut {cut} is outside [1, {layers - 1}] (the general model has {layers} layers)")
    return cut


def header(name: str, preset, argv: list[str], **extra) -> dict:
    return {"experiment": name, "preset": dataclasses.asdict(preset),
            "command": "python -m fedbiobert.experiments " + shlex.join(argv), "machine": machine_info(), **extra}


def pretrain(preset: ParityPreset, specs: list, args, out: Path) -> dict[str, Path]:
    """Run (or, with --resume, keep) the continual pre-trainings; {run name: its final export} of the runs
    that finished. The parity experiment's loop: the bench's runner, rows saved under OUT/pretrain/."""
    from fedbiobert.experiments.parity import pretrain_all  # parity imports the bench: only when pre-training
    plan = SimpleNamespace(preset=preset, specs=specs, out=out, data_root=Path(args.data_root))
    options = SimpleNamespace(cache_dir=getattr(args, "cache_dir", None), resume=args.resume, every=None)
    rows = pretrain_all(plan, options)
    return {row["name"]: Path(row["output_dir"]) / f"round{preset.n_comm_rounds}"
            for row in rows if row["status"] == "ok"}


@dataclass(frozen=True)
class ModeJob(DownstreamJob):
    """A downstream job named by its fine-tuning mode (centralized, federated, or any label) instead of
    finetune/probe; `extra` carries the fine-tuner's flags for it (e.g. --mode federated --n_clients 5)."""
    label: str = "centralized"

    @property
    def mode(self) -> str:
        return self.label

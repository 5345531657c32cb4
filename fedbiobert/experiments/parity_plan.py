"""The parity experiment's plan: which pre-training runs and which downstream jobs, on one preset.

Every pre-training run starts from the same general model (`--init_from`), reads the same corpus and
trains on the same tokens (silos x rounds x batches x batch size x length; centralized training gets all
silos' batches on one process) with the same schedule and seed. The runs are the bench's matrix entries
(`fedbiobert.bench.matrix`), launched by the bench's runner: one harness, not two.

Conditions (`CONDITIONS`): the two controls (the general model as it is, and a random initialisation of
its shape) are not pre-trained; the others are. Every condition's final model is then fine-tuned on each
task with each seed, both fully and as a frozen-encoder probe.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

from fedbiobert.bench.matrix import BenchError, RunSpec, algorithm_kinds, build_matrix, select
from fedbiobert.bench.presets import Preset

GENERAL, RANDOM = "general-model", "random-init"
PUBLIC_PRESETS = ("small", "full")
CONTROLS = (GENERAL, RANDOM)


@dataclass(frozen=True)
class Task:
    name: str
    folder: str                      # under the shared data root
    metric: str                      # the headline score of the task (finetune record key)
    max_train: int | None            # first N training sentences/rows (None: all)
    max_test: int | None             # first N dev and test sentences/rows (None: all)
    epochs: int
    max_len: int = 128
    finetune: bool = True            # full fine-tuning as well as the probe (the probe always runs)


@dataclass(frozen=True)
class ParityPreset:
    name: str
    description: str
    n_clients: int
    n_comm_rounds: int
    num_batch: int                   # batches per silo per round
    batch_size: int
    max_len: int
    lr: float
    val_blocks: int
    head_warmup_fraction: float      # of each run's steps per silo (centralized: of its steps), as --head_warmup_steps
    tasks: tuple[Task, ...]
    finetune_lr: float
    probe_lr: float
    probe_epochs: int
    seeds: str = "1,2,3"
    nproc: int = 2
    on_cuda: bool = False
    run_timeout: float = 1800.0
    entries: str = "centralized,fedavg,fedbert-0-L,fedbert-H-H,fedbiobert-H-H,fedbiobert-H-H-serverhead"
    extra_flags: tuple[str, ...] = ()

    def head_warmup_steps(self, num_batch: int) -> int:
        """--head_warmup_steps of a run taking num_batch steps per round: the same share of every run's
        schedule, so the heads train alone on the same tokens in every run (centralized training takes
        all silos' batches in one stream: n_clients times the steps)."""
        return int(round(self.head_warmup_fraction * self.n_comm_rounds * num_batch))


_NER_SMALL = dict(max_train=1000, max_test=1000, epochs=3)
_NER_TINY = dict(max_train=40, max_test=40, epochs=1, max_len=64)
PRESETS = {
    "tiny": ParityPreset(  # hidden: for tests only (a few minutes with a tiny general model)
        name="tiny", description="test-sized", n_clients=2, n_comm_rounds=2, num_batch=2, batch_size=4, max_len=64,
        lr=1e-3, val_blocks=8, head_warmup_fraction=0.25,
        tasks=(Task("ncbi_disease", "ner/ncbi_disease", "conlleval_f1", **_NER_TINY),
               Task("bc5cdr", "ner/bc5cdr", "conlleval_f1", **_NER_TINY),
               Task("medical_abstracts", "classification/medical_abstracts", "accuracy", max_train=40, max_test=40,
                    epochs=1, max_len=64)),
        finetune_lr=1e-3, probe_lr=3e-3, probe_epochs=1, run_timeout=300),
    "small": ParityPreset(
        name="small", description="2-core CPU, about 85 minutes: 2 silos x 2 rounds x 20 batches of 16 x 128 "
        "tokens per run; full fine-tuning on NCBI-disease (1,000 training sentences, whole dev and test), "
        "probes on NCBI-disease, BC5CDR (first 1,000 sentences of each split) and medical abstracts",
        n_clients=2, n_comm_rounds=2, num_batch=20, batch_size=16, max_len=128, lr=1e-4, val_blocks=256,
        head_warmup_fraction=0.0,  # measured: freezing the body for the new heads cost MLM loss (docs/parity.md)
        tasks=(Task("ncbi_disease", "ner/ncbi_disease", "conlleval_f1", max_train=1000, max_test=None, epochs=3),
               Task("bc5cdr", "ner/bc5cdr", "conlleval_f1", **_NER_SMALL, finetune=False),
               Task("medical_abstracts", "classification/medical_abstracts", "accuracy", max_train=1000,
                    max_test=None, epochs=2, finetune=False)),
        finetune_lr=1e-4, probe_lr=3e-3, probe_epochs=5),
    "full": ParityPreset(
        name="full", description="GPU (--on_cuda True): 4 silos x 10 rounds x 500 batches of 32 x 128 tokens, "
        "full task data", n_clients=4, n_comm_rounds=10, num_batch=500, batch_size=32, max_len=128, lr=5e-5,
        val_blocks=2048, head_warmup_fraction=0.0,
        tasks=(Task("ncbi_disease", "ner/ncbi_disease", "conlleval_f1", None, None, 5),
               Task("bc5cdr", "ner/bc5cdr", "conlleval_f1", None, None, 5),
               Task("medical_abstracts", "classification/medical_abstracts", "accuracy", None, None, 4,
                    max_len=256)),
        finetune_lr=3e-5, probe_lr=3e-3, probe_epochs=10, on_cuda=True, run_timeout=24 * 3600, nproc=2),
}


def read_model_shape(init_from: Path) -> dict:
    """The general model's shape from its config.json (one line if it is not an HF folder)."""
    config_file = init_from / "config.json"
    if not config_file.is_file():
        raise BenchError(f"--init_from '{init_from}' has no config.json (accepted: an HF BERT/RoBERTa folder; "
                         "bash scripts/get_base_model.sh fetches the default, models/minilm-l6)")
    config = json.loads(config_file.read_text(encoding="utf-8"))
    return {key: config[key] for key in ("model_type", "num_hidden_layers", "hidden_size", "num_attention_heads",
                                         "intermediate_size", "vocab_size")}


def bench_preset(preset: ParityPreset, shape: dict, init_from: Path, cut: int) -> Preset:
    """The bench Preset of the pre-training runs: the general model's shape, the parity budget, and the
    warm-start flags every run shares."""
    flags = ("--init_from", str(init_from), "--arch", shape["model_type"], "--lr", f"{preset.lr:g}",
             *preset.extra_flags)
    return Preset(name=f"parity-{preset.name}", description=preset.description,
                  num_layers=shape["num_hidden_layers"], hidden_size=shape["hidden_size"],
                  num_attention_heads=shape["num_attention_heads"], intermediate_size=shape["intermediate_size"],
                  vocab_size=shape["vocab_size"], max_len=preset.max_len, batch_size=preset.batch_size,
                  num_batch=preset.num_batch, n_comm_rounds=preset.n_comm_rounds, n_clients=preset.n_clients,
                  fedbiobert_cuts=(cut,), links="none", nproc=preset.nproc, val_blocks=preset.val_blocks,
                  run_timeout=preset.run_timeout, on_cuda=preset.on_cuda, extra_flags=flags)


def entry_patterns(preset: ParityPreset, num_layers: int, cut: int) -> str:
    """The preset's entries with L (layers) and H (the cut) filled in, e.g. fedbiobert-3-3."""
    return preset.entries.replace("H-H", f"{cut}-{num_layers - cut}").replace("0-L", f"0-{num_layers}")


def pretraining_specs(preset: ParityPreset, init_from: Path, cut: int | None, only: str | None) -> list[RunSpec]:
    shape = read_model_shape(init_from)
    layers = shape["num_hidden_layers"]
    cut = layers // 2 if cut is None else cut
    if not 1 <= cut < layers:
        raise BenchError(f"--cut {cut} is outside [1, {layers - 1}] (the general model has {layers} layers)")
    bench = bench_preset(preset, shape, init_from, cut)
    # FedBERT with one shared server, like fedbiobert's one server: the same processes on the same cores
    specs = select(build_matrix(bench, [None], preset.nproc, algorithm_kinds("sequential")),
                   entry_patterns(preset, layers, cut))
    specs = [replace(spec, model_flags=spec.model_flags + ("--head_warmup_steps",
                                                           str(preset.head_warmup_steps(spec.num_batch))))
             for spec in specs]
    return select(specs, only) if only else specs


@dataclass(frozen=True)
class DownstreamJob:
    """One model fine-tuned (or probed) on one task with every seed: one fedbiobert.finetune call."""
    model_name: str                  # a condition, or CONDITION@roundK for an intermediate export
    model: str                       # an HF folder, or "none" (random init)
    task: Task
    probe: bool
    round: int | None = None         # the pre-training round of the export (None: a control)
    extra: tuple[str, ...] = field(default=())

    @property
    def mode(self) -> str:
        return "probe" if self.probe else "finetune"

    def output(self, out_dir: Path) -> Path:
        return out_dir / "downstream" / self.model_name / f"{self.task.name}-{self.mode}.json"


def control_jobs(preset: ParityPreset, init_from: Path, tasks: tuple[Task, ...]) -> list[DownstreamJob]:
    """The general model as it is, and a random initialisation of its shape with its tokenizer."""
    shape = read_model_shape(init_from)
    random_flags = ("--tokenizer", str(init_from), "--arch", shape["model_type"],
                    "--hidden_size", str(shape["hidden_size"]), "--num_hidden_layers", str(shape["num_hidden_layers"]),
                    "--num_attention_heads", str(shape["num_attention_heads"]),
                    "--intermediate_size", str(shape["intermediate_size"]))
    jobs = []
    for task in tasks:
        for probe in _modes(task):
            jobs.append(DownstreamJob(GENERAL, str(init_from), task, probe))
            jobs.append(DownstreamJob(RANDOM, "none", task, probe, extra=random_flags))
    return jobs


def export_jobs(name: str, run_dir: Path, rounds: list[int], tasks: tuple[Task, ...]) -> list[DownstreamJob]:
    """Downstream jobs of a pre-training run's exports: the last round under the run's name, earlier
    rounds (--every) as NAME@roundK."""
    last = max(rounds)
    jobs = []
    for round_number in sorted(rounds):
        label = name if round_number == last else f"{name}@round{round_number}"
        for task in tasks:
            for probe in _modes(task):
                jobs.append(DownstreamJob(label, str(run_dir / f"round{round_number}"), task, probe,
                                          round=round_number))
    return jobs


def _modes(task: Task) -> tuple[bool, ...]:
    """probe False (full fine-tuning) where the task asks for it, then probe True."""
    return (False, True) if task.finetune else (True,)


def choose_tasks(preset: ParityPreset, names: str | None) -> tuple[Task, ...]:
    if names is None:
        return preset.tasks
    known = {task.name: task for task in preset.tasks}
    chosen = [part.strip() for part in names.split(",") if part.strip()]
    unknown = [name for name in chosen if name not in known]
    if unknown or not chosen:
        raise BenchError(f"--tasks '{names}' (accepted: comma-separated names from {', '.join(known)})")
    return tuple(known[name] for name in chosen)


def with_overrides(preset: ParityPreset, **values) -> ParityPreset:
    """The preset with the options given on the command line (None: keep the preset's)."""
    return replace(preset, **{key: value for key, value in values.items() if value is not None})

"""The liu_miller experiment's plan: presets, the pre-training conditions and the fine-tuning jobs.

Liu & Miller 2020, Table 1: every pre-training condition (the general model as it is; its centralized,
FedAvg, FedBERT and FedBioBERT continual pre-trainings, parity's runs on equal tokens) x every fine-tuning
mode (centralized; FedAvg over 5 IID silos) x every NER task, with every seed.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fedbiobert.bench.matrix import BenchError
from fedbiobert.experiments.common import ModeJob
from fedbiobert.experiments.parity_plan import GENERAL, Task

MODES = ("centralized", "federated")
# condition -> parity entry pattern (H: the cut, L: the layers) and the name the paper's table uses
CONDITIONS = {"centralized": ("centralized", "centralized"), "fedavg": ("fedavg", "FedAvg"),
              "fedbert": ("fedbert-0-L", "FedBERT (0-L)"), "fedbiobert": ("fedbiobert-H-H", "FedBioBERT")}
LABELS = {GENERAL: "general model only", **{name: label for name, (_, label) in CONDITIONS.items()}}


@dataclass(frozen=True)
class LiuMillerPreset:
    name: str
    description: str
    pretraining: str                 # a budget of common.PRETRAINING
    tasks: tuple[Task, ...]
    federated_silos: int = 5
    federated_rounds: int = 3        # FedAvg rounds of one local epoch each (centralized: the task's epochs)
    finetune_lr: float = 2e-4
    seeds: str = "1,2,3"
    probe_lr: float = 3e-3           # unused (no probes); downstream.finetune_command reads it
    probe_epochs: int = 1
    finetune_flags: tuple[str, ...] = ()  # added to every fine-tuning job's command


_NCBI, _BC5CDR = "ner/ncbi_disease", "ner/bc5cdr"
_TINY = dict(max_train=30, max_test=20, epochs=1, max_len=32)
# small: measured, 200 sentences x 2 epochs at lr 2e-4 (26 steps) left NCBI-disease at F1 0 (every tag O)
_SMALL = dict(max_train=300, max_test=150, epochs=3, max_len=64)
PRESETS = {
    "tiny": LiuMillerPreset(
        "tiny", "test-sized", "tiny",
        (Task("ncbi_disease", _NCBI, "conlleval_f1", **_TINY), Task("bc5cdr", _BC5CDR, "conlleval_f1", **_TINY)),
        federated_silos=2, federated_rounds=1, finetune_lr=1e-3, seeds="1"),
    "small": LiuMillerPreset(
        "small", "2-core CPU, about 26 minutes: 4 continual pre-trainings of 81,920 tokens; NCBI-disease and "
        "BC5CDR with their first 300 training and 150 dev and test sentences, 64 sub-tokens (batches grouped by "
        "length), lr 3e-4, 3 epochs "
        "centralized or 3 FedAvg rounds of one local epoch over 5 silos (the same passes over the data), seeds 1, "
        "2, 3", "small",
        (Task("ncbi_disease", _NCBI, "conlleval_f1", **_SMALL), Task("bc5cdr", _BC5CDR, "conlleval_f1", **_SMALL)),
        # batches of similar lengths: 1.2x the real tokens instead of 1.8x, the preset within 30 minutes
        federated_rounds=3, finetune_lr=3e-4, finetune_flags=("--group_by_length", "4")),
    "full": LiuMillerPreset(
        "full", "GPU: the full pre-training budget; both tasks on all their data, 128 sub-tokens, 5 epochs "
        "centralized or 10 FedAvg rounds over 5 silos", "full",
        (Task("ncbi_disease", _NCBI, "conlleval_f1", None, None, 5), Task("bc5cdr", _BC5CDR, "conlleval_f1", None,
                                                                          None, 5)),
        federated_rounds=10, finetune_lr=5e-5),
}
PUBLIC_PRESETS = ("small", "full")


def choose(text: str | None, known: tuple[str, ...], flag: str) -> tuple[str, ...]:
    """Comma-separated names from `known` (None: all), in `known`'s order."""
    if text is None:
        return known
    chosen = [part.strip() for part in text.split(",") if part.strip()]
    if not chosen or any(name not in known for name in chosen):
        raise BenchError(f"{flag} '{text}' (accepted: comma-separated names from {', '.join(known)})")
    return tuple(name for name in known if name in chosen)


def entries_of(conditions: tuple[str, ...]) -> str:
    """The parity entry patterns of the pre-trained conditions (the general model needs none)."""
    return ",".join(CONDITIONS[name][0] for name in conditions if name in CONDITIONS)


def condition_of(run_name: str) -> str:
    """A parity run's name (e.g. fedbiobert-3-3, fedbert-0-6) back to its condition."""
    if run_name in CONDITIONS:
        return run_name
    if run_name.startswith("fedbert-0-"):
        return "fedbert"
    if run_name.startswith("fedbiobert-") and not run_name.endswith("serverhead"):
        return "fedbiobert"
    raise BenchError(f"pre-training run '{run_name}' has no liu_miller condition")


def mode_flags(preset: LiuMillerPreset, mode: str) -> tuple[str, ...]:
    if mode == "centralized":
        return ("--mode", "centralized")
    return ("--mode", "federated", "--n_clients", str(preset.federated_silos), "--split", "random",
            "--rounds", str(preset.federated_rounds), "--local_epochs", "1")


def jobs(preset: LiuMillerPreset, models: dict[str, Path], tasks: tuple[Task, ...],
         modes: tuple[str, ...]) -> list[ModeJob]:
    """{condition: model folder} x tasks x fine-tuning modes, task by task and mode by mode (centralized
    first), the conditions in the table's order: an experiment cut short holds whole columns of the table."""
    order = [GENERAL, *CONDITIONS]
    return [ModeJob(condition, str(models[condition]), task, False,
                    extra=mode_flags(preset, mode) + preset.finetune_flags, label=mode)
            for task in tasks for mode in modes for condition in sorted(models, key=order.index)]

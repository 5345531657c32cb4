"""The audit's presets, command-line options and the checks of every input, made before any work.

`small` fits the 2-core CPU in about 15 minutes; `full` is sized for a GPU (activations and decoders on
--device cuda; the NER fine-tunes measuring F1 run on the CPU, as fedbiobert/finetune does); `smoke` only
checks that every stage runs.
"""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from pathlib import Path

from fedbiobert.privacy.defence import Defence
from fedbiobert.privacy.downstream import F1Settings
from fedbiobert.privacy.inversion import DecoderSettings
from fedbiobert.privacy.texts import check_text_path

REPO = Path(__file__).resolve().parents[2]
DEFAULT_DATA_ROOT = Path(os.environ.get("FEDBIOBERT_SHARED_DATA") or REPO.parent / "shared" / "data")
DEFAULT_MODEL = REPO / "models" / "minilm-l6"


@dataclass(frozen=True)
class Preset:
    name: str
    public_windows: int | None      # public sequences the decoders train on (None: all)
    silo_sequences: int | None      # attacked sequences (None: all)
    max_len: int
    cuts: tuple[int, ...]           # clamped to the model's layers
    sigmas: tuple[float, ...]
    clips: tuple[float, ...]        # each clip is combined with every sigma
    decoder: DecoderSettings = field(default_factory=DecoderSettings)
    f1: F1Settings = field(default_factory=F1Settings)


PRESETS = {
    "small": Preset("small", 2000, 400, 64, (0, 1, 2, 3, 4, 6), (0.5, 1.0, 2.0, 4.0), (5.0,),
                    DecoderSettings(epochs=4), F1Settings(max_train=1000, max_test=300, epochs=2)),
    "full": Preset("full", None, 2000, 128, tuple(range(0, 25)), (0.25, 0.5, 1.0, 2.0, 4.0, 8.0), (2.0, 5.0, 10.0),
                   DecoderSettings(epochs=10, batch_tokens=8192, negatives=8192),
                   F1Settings(max_train=None, max_test=None, epochs=3, max_len=128)),
    # a check that the whole pipeline runs (tests; about a minute with models/minilm-l6): its numbers mean little
    "smoke": Preset("smoke", 300, 60, 32, (0, 1), (2.0,), (),
                    DecoderSettings(epochs=1, batch_tokens=1024, negatives=1024),
                    F1Settings(max_train=100, max_test=50, epochs=1, max_len=32)),
}


@dataclass
class AuditPlan:
    preset: Preset
    model_dir: Path
    public: Path
    silo: list[Path]
    ner: Path                       # the NER folder whose F1 prices each defence
    cuts: list[int]
    defence_cut: int
    defences: list[Defence]
    out: Path
    seed: int
    device: str
    resume: bool


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", nargs="?", default=str(DEFAULT_MODEL),
                        help="the client model, an HF encoder folder (default models/minilm-l6, the warm start)")
    parser.add_argument("--out", required=True, help="output folder (results.json, results.md, privacy.png)")
    parser.add_argument("--preset", default="small", help=f"one of {', '.join(PRESETS)} (default small)")
    parser.add_argument("--data", help="the silo's held-out text attacked: comma-separated NER folders (their "
                        "test.tsv; entities scored) or .txt files (default: ner/ncbi_disease,ner/bc5cdr)")
    parser.add_argument("--public", help="the public text the server trains on, a .txt file (default: "
                        "pretrain/general_wikitext2_test.txt)")
    parser.add_argument("--data_root", default=str(DEFAULT_DATA_ROOT), help="where the defaults are read "
                        "(default ../shared/data or $FEDBIOBERT_SHARED_DATA)")
    parser.add_argument("--cuts", help="client layers to audit, e.g. 0,1,2 (0: embeddings; default: the preset's)")
    parser.add_argument("--defence_cut", type=int, help="the cut the defences are measured at (default: half the "
                        "model, as in the parity experiment)")
    parser.add_argument("--sigmas", help="--activation_noise values measured, comma-separated (default: preset's)")
    parser.add_argument("--clips", help="--activation_clip values, each with every sigma ('' for none)")
    parser.add_argument("--ner", help="NER folder fine-tuned to price each defence in F1 (default ner/ncbi_disease)")
    parser.add_argument("--seed", type=int, default=0, help="seed of sampling, decoders and noise (default 0)")
    parser.add_argument("--device", default="cpu", help="device of activations and decoders: cpu or cuda")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--resume", action="store_true", help="keep OUT's finished parts; redo only the rest")


def _numbers(text: str, flag: str, kind=float) -> list:
    try:
        values = [kind(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"{flag} '{text}' is not a comma-separated list of numbers "
                         f"(accepted: e.g. {'0,1,2' if kind is int else '0.5,1,2'})") from None
    bad = [value for value in values if not (0 <= value < float("inf"))]
    if bad:
        raise ValueError(f"{flag} '{text}' has {bad[0]}: values must be 0 or more")
    return values


def _paths(text: str | None, default: list[str], root: Path) -> list[Path]:
    names = [part.strip() for part in text.split(",") if part.strip()] if text else default
    return [Path(name) if text else root / name for name in names]


def make_plan(args: argparse.Namespace, num_layers) -> AuditPlan:
    """Every option checked, in order, before any work; ValueError (one line) for the first bad one.
    `num_layers(model_dir)`: the model's encoder layers (ValueError if it is not a model)."""
    if args.preset not in PRESETS:
        raise ValueError(f"--preset '{args.preset}' is unknown (accepted: {', '.join(PRESETS)})")
    preset = PRESETS[args.preset]
    model_dir, root = Path(args.model), Path(args.data_root)
    layers = num_layers(model_dir)
    public = _paths(args.public, ["pretrain/general_wikitext2_test.txt"], root)[0]
    silo = _paths(args.data, ["ner/ncbi_disease", "ner/bc5cdr"], root)
    ner = _paths(args.ner, ["ner/ncbi_disease"], root)[0]
    check_text_path(public, "--public")
    if public.is_dir():
        raise ValueError(f"--public '{public}' is a folder (accepted: a .txt file, one document per line)")
    for path in silo:
        check_text_path(path, "--data")
    if not (ner / "train.tsv").is_file():
        raise ValueError(f"--ner '{ner}' has no train.tsv (accepted: an NER folder such as ner/ncbi_disease)")
    cuts = _numbers(args.cuts, "--cuts", int) if args.cuts else [cut for cut in preset.cuts if cut <= layers]
    defence_cut = layers // 2 if args.defence_cut is None else args.defence_cut
    for cut in cuts + [defence_cut]:
        if cut > layers:
            raise ValueError(f"cut {cut} exceeds the model's {layers} layers (accepted: 0 to {layers})")
    sigmas = _numbers(args.sigmas, "--sigmas") if args.sigmas is not None else list(preset.sigmas)
    clips = _numbers(args.clips, "--clips") if args.clips is not None else list(preset.clips)
    defences = ([Defence()] + [Defence(sigma) for sigma in sigmas if sigma > 0]
                + [Defence(sigma, clip) for clip in clips if clip > 0 for sigma in sigmas if sigma > 0])
    if args.device not in ("cpu", "cuda") and not args.device.startswith("cuda:"):
        raise ValueError(f"--device '{args.device}' (accepted: cpu, cuda or cuda:N)")
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads {args.threads} must be at least 1")
    out = Path(args.out)
    if (out / "results.json").exists() and not args.resume:
        raise ValueError(f"--out '{out}' already holds an audit (pass --resume to continue it, or choose another "
                         "folder)")
    return AuditPlan(preset, model_dir, public, silo, ner, sorted(set(cuts)), defence_cut,
                     list(dict.fromkeys(defences)), out, args.seed, args.device, args.resume)

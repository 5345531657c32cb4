"""The `lora` experiment's results.md table and lora.png (entity F1 against megabytes a round; validation
loss of full-weight and LoRA pre-training with what each silo uploads)."""
from __future__ import annotations

from pathlib import Path


def _mb(value) -> str:
    return "-" if value is None else f"{value / 1e6:.2f}"


def _failed(row: dict) -> str:
    return f"| {row['name']} | failed: {row['error']} | | | | |"


def _finetune_lines(rows: list[dict]) -> list[str]:
    lines = ["Federated fine-tuning on NCBI-disease (entity F1 on the whole test split; bytes as exchanged, fp32):",
             "", "| run | F1 | MB up a round | MB down a round | vs full-model FedAvg | train s |",
             "|---|---|---|---|---|---|"]
    for row in rows:
        if row["status"] != "ok":
            lines.append(_failed(row))
            continue
        ratio = row.get("communication_vs_full_model")
        lines.append(f"| {row['name']} | {100 * row['f1']:.2f} | {_mb(row['bytes_up_per_round'])} | "
                     f"{_mb(row['bytes_down_per_round'])} | {'-' if ratio is None else f'{100 * ratio:.2f}%'} | "
                     f"{row['train_seconds']:.0f} |")
    weights = [row for row in rows if row.get("adaptive_weights")]
    for row in weights:
        lines += ["", f"{row['name']}: silo weights per round {row['adaptive_weights']}"]
    return lines


def _pretrain_lines(rows: list[dict]) -> list[str]:
    lines = ["Continual pre-training of the general model, FedBioBERT, equal tokens (validation MLM loss ± SE):", "",
             "| run | trains | val MLM loss | tokens | upload per silo per round (MB) | train s |",
             "|---|---|---|---|---|---|"]
    for row in rows:
        if row["status"] != "ok":
            lines.append(_failed(row))
            continue
        lora = row.get("lora")
        trains = f"LoRA r{lora['rank']} {','.join(lora['targets'])} + heads" if lora else "every weight"
        lines.append(f"| {row['name']} | {trains} | {row['val_loss']:.4f} ± {row['val_loss_se']:.4f} | "
                     f"{row['tokens']} | {_mb(row['exchange_upload_bytes_per_silo'])} | {row['train_seconds']:.0f} |")
    return lines


def markdown(results: dict) -> str:
    lines = [f"# LoRA against full weights ({results['preset']} preset)", "", f"`{results['command']}`", ""]
    if "finetune" in results:
        lines += _finetune_lines(results["finetune"]) + [""]
    if "pretrain" in results:
        lines += _pretrain_lines(results["pretrain"]) + [""]
    return "\n".join(lines)


def plot(results: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    rows = [row for row in results.get("finetune", []) if row["status"] == "ok"]
    for row in rows:
        megabytes = (row["bytes_up_per_round"] + row["bytes_down_per_round"]) / 1e6
        axes[0].scatter(megabytes, 100 * row["f1"])
        axes[0].annotate(row["name"], (megabytes, 100 * row["f1"]), fontsize=7)
    axes[0].set(xscale="log", xlabel="MB exchanged a round (up + down)", ylabel="entity F1",
                title="fine-tuning: quality against bytes")
    runs = [row for row in results.get("pretrain", []) if row["status"] == "ok"]
    axes[1].bar([row["name"] for row in runs], [row["val_loss"] for row in runs],
                yerr=[row["val_loss_se"] for row in runs], color=["tab:blue", "tab:orange"][:len(runs)])
    if runs:  # the difference, not the distance from zero
        losses = [row["val_loss"] for row in runs]
        axes[1].set_ylim(min(losses) - 0.3, max(losses) + 0.3)
    axes[1].set(ylabel="validation MLM loss (± SE)", title="pre-training at equal tokens")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)

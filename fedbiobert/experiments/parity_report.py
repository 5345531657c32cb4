"""The parity experiment's outputs: results.json, results.md and parity.png.

Comparisons (repeated in results.md):
- pretrain_seconds: the sum of the run's round times (training, exchange and validation; not start-up, which
  includes building the token cache for the first run only).
- speedup_total_vs_fedbert: FedBERT's pretrain_seconds over the run's (the whole schedule, warm-up round
  included); speedup_vs_fedbert: seconds per steady round of FedBERT as published (fedbert-0-L, head on the
  client) over this run's (bench.results.add_speedups). Both come from runs of this experiment, one after
  the other on the same machine.
- val_loss_vs_fedbert_pct: (validation MLM loss - FedBERT's) / FedBERT's, in percent; the validation
  set is drawn from every corpus file, the same blocks and masks for every run.
- Downstream, per task and mode (finetune: every weight trained; probe: the encoder frozen): the mean and
  sample std over seeds of the task's headline metric; delta_vs_fedbert the difference of means; the
  seed spread of a difference is sqrt(std_a^2 + std_b^2) (the spread of one seed's difference), and
  beyond_spread says whether |delta| exceeds it. within_target applies the issue's target: |delta| <=
  max(1 point, spread).
"""
from __future__ import annotations

import math

from fedbiobert.atomic import atomic_write, write_json_atomically, write_text_atomically
from fedbiobert.experiments.parity_plan import CONTROLS, GENERAL, RANDOM

BASELINE_PREFIX = "fedbert-0-"
TARGET_POINTS = 0.01  # 1 F1 (or accuracy) point
PRETRAINING_FIELDS = ("name", "algorithm", "num_client_encoder", "num_server_encoder", "head_placement", "status",
                      "error", "rounds", "wall_seconds", "train_seconds", "seconds_per_round", "tokens",
                      "tokens_per_second", "val_loss", "val_loss_se", "val_loss_by_file", "speedup_vs_fedbert",
                      "bytes_up_per_round", "bytes_down_per_round")


def fedbert_name(rows: list[dict]) -> str | None:
    return next((row["name"] for row in rows if row.get("baseline")), None)


def pretraining_row_view(row: dict, baseline: dict | None) -> dict:
    view = {key: row.get(key) for key in PRETRAINING_FIELDS}
    curve = row.get("curve") or []
    view["seconds_at_round"] = {str(point["round"]): point["train_seconds"] for point in curve}
    view["pretrain_seconds"] = curve[-1]["train_seconds"] if curve else None
    if baseline and view["pretrain_seconds"] and baseline.get("curve"):
        view["speedup_total_vs_fedbert"] = baseline["curve"][-1]["train_seconds"] / view["pretrain_seconds"]
    if baseline and row.get("val_loss") is not None and baseline.get("val_loss"):
        view["val_loss_vs_fedbert_pct"] = 100 * (row["val_loss"] - baseline["val_loss"]) / baseline["val_loss"]
    return view


def downstream_entry(record: dict, model_name: str, task, mode: str, round_number: int | None) -> dict:
    metric = task.metric
    return {"model": model_name, "round": round_number, "task": task.name, "mode": mode, "metric": metric,
            "mean": record["mean"][metric], "std": record["std"][metric], "seeds": record["seeds"],
            "scores": [run[metric] for run in record["runs"]],
            "train_seconds_mean": record["mean"].get("train_seconds")}


def add_comparisons(entries: list[dict], baseline_name: str | None) -> None:
    """delta/spread against FedBERT and against the general model, in place."""
    index = {(entry["model"], entry["task"], entry["mode"]): entry for entry in entries}
    for entry in entries:
        for label, other_name in (("fedbert", baseline_name), ("general", GENERAL)):
            other = index.get((other_name, entry["task"], entry["mode"])) if other_name else None
            if other is None or other is entry:
                continue
            delta = entry["mean"] - other["mean"]
            spread = math.hypot(entry["std"], other["std"])
            entry[f"delta_vs_{label}"] = delta
            entry[f"spread_vs_{label}"] = spread
            entry[f"beyond_spread_vs_{label}"] = abs(delta) > spread
            if label == "fedbert":
                entry["within_target_vs_fedbert"] = abs(delta) <= max(TARGET_POINTS, spread)


def write_results(out_dir, header: dict, rows: list[dict], entries: list[dict], plot: bool) -> None:
    baseline_name = fedbert_name(rows)
    baseline = next((row for row in rows if row["name"] == baseline_name), None)
    pretraining = [pretraining_row_view(row, baseline) for row in rows]
    add_comparisons(entries, baseline_name)
    results = {**header, "fedbert": baseline_name, "pretraining": pretraining, "downstream": entries}
    write_json_atomically(out_dir / "results.json", results)
    write_text_atomically(out_dir / "results.md", markdown(results))
    if plot and entries:
        plot_scores(results, out_dir / "parity.png")


def _num(value, digits: int = 2, suffix: str = "") -> str:
    return "-" if value is None else f"{value:,.{digits}f}{suffix}"


def _times(value) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _signed(value, digits: int = 1, scale: float = 100.0) -> str:
    return "-" if value is None else f"{scale * value:+.{digits}f}"


def markdown(results: dict) -> str:
    machine = results["machine"]
    lines = [f"# Parity experiment ({results['preset']['name']} preset)", "",
             f"Command: `{results['command']}`  ", f"Commit: {machine.get('git_commit')}; machine: "
             f"{machine.get('processor')} ({machine.get('device')}); general model: `{results['init_from']}`, "
             f"cut {results['cut']}.", "",
             "## Pre-training (equal tokens, same schedule and seed)", "",
             "| run | pre-training s | speed-up (total) | s/round (steady) | speed-up (steady) | val MLM loss ± SE | "
             "vs FedBERT | status |", "|---|---|---|---|---|---|---|---|"]
    for row in results["pretraining"]:
        speedup = "-" if row.get("speedup_vs_fedbert") is None else f"{row['speedup_vs_fedbert']:.2f}x"
        val = "-" if row.get("val_loss") is None else f"{row['val_loss']:.4f} ± {row['val_loss_se']:.4f}"
        lines.append(f"| {row['name']} | {_num(row.get('pretrain_seconds'), 1)} | "
                     f"{_times(row.get('speedup_total_vs_fedbert'))} | {_num(row.get('seconds_per_round'))} "
                     f"| {speedup} | {val} | {_num(row.get('val_loss_vs_fedbert_pct'), 2, '%')} | {row['status']} |")
    lines += ["", "Validation loss by corpus file:", "", *_by_file_table(results["pretraining"]), ""]
    for mode, title in (("finetune", "Fine-tuning (every weight trained)"), ("probe", "Frozen-encoder probe")):
        lines += _downstream_tables(results["downstream"], mode, title)
    lines += ["", _CONVENTIONS]
    return "\n".join(lines) + "\n"


def _by_file_table(rows: list[dict]) -> list[str]:
    files = sorted({name for row in rows for name in (row.get("val_loss_by_file") or {})})
    if not files:
        return ["(no per-file losses)"]
    out = ["| run | " + " | ".join(files) + " |", "|---|" + "---|" * len(files)]
    for row in rows:
        by_file = row.get("val_loss_by_file") or {}
        cells = [_num(_loss_of(by_file.get(name)), 3) for name in files]
        out.append(f"| {row['name']} | " + " | ".join(cells) + " |")
    return out


def _loss_of(value):
    return value.get("loss") if isinstance(value, dict) else value


def _downstream_tables(entries: list[dict], mode: str, title: str) -> list[str]:
    chosen = [entry for entry in entries if entry["mode"] == mode]
    if not chosen:
        return []
    lines = ["", f"## {title}", ""]
    for task in dict.fromkeys(entry["task"] for entry in chosen):
        rows = [entry for entry in chosen if entry["task"] == task]
        lines += [f"**{task}** ({rows[0]['metric']}, mean ± std over seeds {rows[0]['seeds']}, points)", "",
                  "| model | score | vs FedBERT | beyond spread | within target | vs general model |",
                  "|---|---|---|---|---|---|"]
        for entry in sorted(rows, key=_model_order):
            lines.append(f"| {entry['model']} | {100 * entry['mean']:.2f} ± {100 * entry['std']:.2f} | "
                         f"{_signed(entry.get('delta_vs_fedbert'))} | {_yes(entry.get('beyond_spread_vs_fedbert'))} | "
                         f"{_yes(entry.get('within_target_vs_fedbert'))} | {_signed(entry.get('delta_vs_general'))}"
                         f"{' (beyond spread)' if entry.get('beyond_spread_vs_general') else ''} |")
        lines.append("")
    return lines


def _yes(value) -> str:
    return "-" if value is None else ("yes" if value else "no")


def _model_order(entry: dict):
    return (entry["model"] not in CONTROLS, entry["model"] != GENERAL, entry.get("round") or 0, entry["model"])


_CONVENTIONS = """Conventions: speed-up = FedBERT-as-published's seconds per steady round over the run's (same
experiment, runs one after another). The seed spread of a difference is sqrt(std_a^2 + std_b^2);
"within target" is |difference| <= max(1 point, that spread). NER scores are entity-level F1 in
seqeval's default (conlleval) mode; classification scores are accuracy."""


def plot_scores(results: dict, path) -> None:
    """Downstream score against pre-training wall time, a line per method (a point per evaluated round),
    the controls as horizontal lines; one panel per task and mode."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    entries = results["downstream"]
    panels = list(dict.fromkeys((entry["task"], entry["mode"]) for entry in entries))
    seconds = {row["name"]: row.get("seconds_at_round") or {} for row in results["pretraining"]}
    columns = min(3, len(panels))
    rows = math.ceil(len(panels) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(5.2 * columns, 4 * rows), squeeze=False)
    for axis, (task, mode) in zip(axes.flat, panels):
        chosen = [e for e in entries if e["task"] == task and e["mode"] == mode]
        _panel(axis, chosen, seconds)
        axis.set_title(f"{task} ({mode})")
        axis.set_xlabel("pre-training time (s, sum of round times)")
        axis.set_ylabel(chosen[0]["metric"])
    for axis in list(axes.flat)[len(panels):]:
        axis.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="lower center", ncol=4, fontsize=8)
    figure.tight_layout(rect=(0, 0.08, 1, 1))
    with atomic_write(path, "wb") as stream:
        figure.savefig(stream, format="png", dpi=110)
    plt.close(figure)


def _panel(axis, entries: list[dict], seconds: dict) -> None:
    for control, style in ((GENERAL, "--"), (RANDOM, ":")):
        found = next((e for e in entries if e["model"] == control), None)
        if found:
            axis.axhline(found["mean"], linestyle=style, color="grey", label=control)
    methods = dict.fromkeys(e["model"].split("@")[0] for e in entries if e["model"] not in CONTROLS)
    for method in methods:
        points = sorted((e for e in entries if e["model"].split("@")[0] == method), key=lambda e: e["round"] or 0)
        at = [(seconds.get(method, {}).get(str(e["round"])), e) for e in points]
        usable = [(time, e) for time, e in at if time is not None]
        if usable:
            axis.errorbar([time for time, _ in usable], [e["mean"] for _, e in usable],
                          yerr=[e["std"] for _, e in usable], marker="o", capsize=3, label=method)

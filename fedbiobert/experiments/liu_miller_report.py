"""The liu_miller experiment's outputs: results.json, results.md and liu_miller.png, and the paper's pattern.

Scores are entity-level precision, recall and F1 in seqeval's default (conlleval) mode, mean and sample std
over seeds. The pattern of Liu & Miller 2020, checked per task (definitions repeated in results.md):
- `federated_close_to_centralized`: with centralized fine-tuning, every federated pre-training (FedAvg,
  FedBERT, FedBioBERT) within max(1 F1 point, the seed spread sqrt(std_a^2 + std_b^2)) of centralized
  pre-training;
- `pretrained_above_general`: with centralized fine-tuning, centralized and every federated pre-training
  above the general model (mean F1);
- `federated_finetuning_a_little_below`: for every pre-training condition, federated fine-tuning below
  centralized fine-tuning by more than 0 and at most 5 F1 points.
"""
from __future__ import annotations

import math

from fedbiobert.atomic import atomic_write, write_json_atomically, write_text_atomically
from fedbiobert.experiments.liu_miller_plan import CONDITIONS, LABELS, MODES
from fedbiobert.experiments.parity_plan import GENERAL

CLOSE_POINTS, LITTLE_POINTS = 0.01, 0.05
FEDERATED = tuple(name for name in CONDITIONS if name != "centralized")


def job_entry(record: dict, job) -> dict:
    mean, std = record["mean"], record["std"]
    return {"condition": job.model_name, "task": job.task.name, "mode": job.mode, "seeds": record["seeds"],
            **{name: mean[f"conlleval_{name}"] for name in ("precision", "recall", "f1")},
            **{f"{name}_std": std[f"conlleval_{name}"] for name in ("precision", "recall", "f1")},
            "strict_f1": mean["f1"], "f1_scores": [run["conlleval_f1"] for run in record["runs"]],
            "train_seconds_mean": mean["train_seconds"]}


def pattern(entries: list[dict], task: str) -> dict:
    """The paper's three claims on one task: True/False (None when a needed entry is missing), with numbers."""
    index = {(e["condition"], e["mode"]): e for e in entries if e["task"] == task}
    central = index.get(("centralized", "centralized"))
    general = index.get((GENERAL, "centralized"))
    close = [(name, index[(name, "centralized")]) for name in FEDERATED if (name, "centralized") in index]
    result = {"task": task}
    if central and close:
        gaps = {name: e["f1"] - central["f1"] for name, e in close}
        spreads = {name: math.hypot(e["f1_std"], central["f1_std"]) for name, e in close}
        result["federated_minus_centralized_pretraining"] = gaps
        result["federated_close_to_centralized"] = all(abs(gaps[n]) <= max(CLOSE_POINTS, spreads[n]) for n in gaps)
    if general and (central or close):
        above = {name: e["f1"] - general["f1"] for name, e in ([("centralized", central)] if central else []) + close}
        result["pretrained_minus_general"] = above
        result["pretrained_above_general"] = all(value > 0 for value in above.values())
    drops = {name: index[(name, "centralized")]["f1"] - index[(name, "federated")]["f1"]
             for name in (GENERAL, *CONDITIONS) if (name, "centralized") in index and (name, "federated") in index}
    if drops:
        result["centralized_minus_federated_finetuning"] = drops
        result["federated_finetuning_a_little_below"] = all(0 < value <= LITTLE_POINTS for value in drops.values())
    return result


def write_results(out_dir, header: dict, entries: list[dict], plot: bool) -> None:
    tasks = list(dict.fromkeys(entry["task"] for entry in entries))
    results = {**header, "finetuning": entries, "pattern": [pattern(entries, task) for task in tasks]}
    write_json_atomically(out_dir / "results.json", results)
    write_text_atomically(out_dir / "results.md", markdown(results))
    if plot and entries:
        plot_f1(results, out_dir / "liu_miller.png")


def _cell(entry: dict | None) -> str:
    if entry is None:
        return "- | - | -"
    return (f"{100 * entry['precision']:.1f} | {100 * entry['recall']:.1f} | "
            f"{100 * entry['f1']:.1f} ± {100 * entry['f1_std']:.1f}")


def markdown(results: dict) -> str:
    entries = results["finetuning"]
    lines = [f"# Liu & Miller experiment ({results['preset']['name']} preset)", "",
             f"Command: `{results['command']}`  ",
             f"Commit: {results['machine'].get('git_commit')}; general model `{results['init_from']}`; "
             f"pre-training: {results['pretraining']}.", ""]
    for task in dict.fromkeys(entry["task"] for entry in entries):
        index = {(e["condition"], e["mode"]): e for e in entries if e["task"] == task}
        lines += [f"## {task} (entity P / R / F1 in points, conlleval; F1 mean ± std over seeds)", "",
                  "| pre-training | centralized FT: P | R | F1 | federated FT (5 silos): P | R | F1 |",
                  "|---|---|---|---|---|---|---|"]
        for condition in (GENERAL, *CONDITIONS):
            if any((condition, mode) in index for mode in MODES):
                cells = " | ".join(_cell(index.get((condition, mode))) for mode in MODES)
                lines.append(f"| {LABELS[condition]} | {cells} |")
        lines.append("")
    lines += ["## The paper's pattern", "", *(_pattern_lines(item) for item in results["pattern"]), "", _DEFINITIONS]
    return "\n".join(lines) + "\n"


def _verdict(value) -> str:
    return "not measured" if value is None else ("holds" if value else "does not hold")


def _points(values: dict | None) -> str:
    return ", ".join(f"{LABELS[name]} {100 * value:+.1f}" for name, value in (values or {}).items()) or "-"


def _pattern_lines(item: dict) -> str:
    return (f"- **{item['task']}**: federated pre-training close to centralized "
            f"{_verdict(item.get('federated_close_to_centralized'))} "
            f"({_points(item.get('federated_minus_centralized_pretraining'))}); pre-trained above the general model "
            f"{_verdict(item.get('pretrained_above_general'))} ({_points(item.get('pretrained_minus_general'))}); "
            f"federated fine-tuning a little below centralized "
            f"{_verdict(item.get('federated_finetuning_a_little_below'))} (centralized minus federated: "
            f"{_points(item.get('centralized_minus_federated_finetuning'))}).")


_DEFINITIONS = """Definitions: "close" is within max(1 F1 point, the seed spread sqrt(std_a^2 + std_b^2)) of centralized
pre-training, both fine-tuned centrally; "above" is a higher mean F1 than the general model's, fine-tuned
centrally; "a little below" is federated fine-tuning's mean F1 lower than centralized fine-tuning's by more
than 0 and at most 5 points, for every pre-training condition. Differences are in F1 points."""


def plot_f1(results: dict, path) -> None:
    """F1 per pre-training condition, centralized and federated fine-tuning side by side; a panel per task."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    entries = results["finetuning"]
    tasks = list(dict.fromkeys(entry["task"] for entry in entries))
    figure, axes = plt.subplots(1, len(tasks), figsize=(6 * len(tasks), 4.2), squeeze=False)
    for axis, task in zip(axes.flat, tasks):
        index = {(e["condition"], e["mode"]): e for e in entries if e["task"] == task}
        conditions = [c for c in (GENERAL, *CONDITIONS) if any((c, m) in index for m in MODES)]
        for offset, mode in ((-0.2, "centralized"), (0.2, "federated")):
            chosen = [(i, index[(c, mode)]) for i, c in enumerate(conditions) if (c, mode) in index]
            axis.bar([i + offset for i, _ in chosen], [100 * e["f1"] for _, e in chosen], width=0.4,
                     yerr=[100 * e["f1_std"] for _, e in chosen], capsize=3, label=f"{mode} fine-tuning")
        axis.set_xticks(range(len(conditions)), [LABELS[c] for c in conditions], rotation=20, fontsize=8)
        axis.set_ylabel("entity F1 (conlleval, points)")
        axis.set_title(task)
        axis.legend(fontsize=8)
    figure.tight_layout()
    with atomic_write(path, "wb") as stream:
        figure.savefig(stream, format="png", dpi=110)
    plt.close(figure)

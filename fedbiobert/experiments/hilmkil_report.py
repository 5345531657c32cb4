"""The hilmkil experiment's outputs: results.json, results.md and hilmkil.png.

Definitions (repeated in results.md): a run's dev curve is its dev accuracy after each round (mean over
seeds), from the fine-tuner's `dev_history`; the target is 90% of the one-silo run's dev accuracy after the
last round; rounds_to_target is the first round whose dev accuracy reaches it (None: not within the
rounds); test accuracy is the fine-tuner's (the model of the best dev round, mean ± sample std over seeds).
"""
from __future__ import annotations

import statistics

from fedbiobert.atomic import atomic_write, write_json_atomically, write_text_atomically

TARGET_SHARE = 0.9
ONE_SILO = "1-silo"


def run_entry(record: dict, label: str) -> dict:
    """One run's view: its split and silo count, test accuracy over seeds, dev accuracy per round."""
    split, _, count = label.partition("-")
    curves = [[point["accuracy"] for point in run.get("dev_history") or []] for run in record["runs"]]
    length = min(len(curve) for curve in curves) if curves else 0
    return {"run": label, "split": "both" if label == ONE_SILO else split,
            "silos": 1 if label == ONE_SILO else int(count), "seeds": record["seeds"],
            "test_accuracy": record["mean"]["accuracy"], "test_accuracy_std": record["std"]["accuracy"],
            "test_macro_f1": record["mean"]["macro_f1"],
            "dev_accuracy_by_round": [statistics.fmean(curve[index] for curve in curves) for index in range(length)],
            "train_seconds": record["mean"]["train_seconds"],
            "train_examples": record["runs"][0]["train_examples"]}


def add_targets(entries: list[dict]) -> float | None:
    """rounds_to_target of every entry, in place; the target (None without a one-silo run)."""
    one = next((entry for entry in entries if entry["run"] == ONE_SILO and entry["dev_accuracy_by_round"]), None)
    target = TARGET_SHARE * one["dev_accuracy_by_round"][-1] if one else None
    for entry in entries:
        curve = entry["dev_accuracy_by_round"]
        entry["dev_accuracy_final"] = curve[-1] if curve else None
        reached = [index + 1 for index, value in enumerate(curve) if target is not None and value >= target]
        entry["rounds_to_target"] = reached[0] if reached else None
    return target


def write_results(out_dir, header: dict, preset, entries: list[dict], plot: bool) -> None:
    order = ("both", "iid", "dirichlet")
    entries = sorted(entries, key=lambda entry: (order.index(entry["split"]), entry["silos"]))
    target = add_targets(entries)
    results = {**header, "target_share": TARGET_SHARE, "target_dev_accuracy": target, "runs": entries}
    write_json_atomically(out_dir / "results.json", results)
    write_text_atomically(out_dir / "results.md", markdown(results, preset.rounds))
    if plot and entries:
        plot_curves(results, out_dir / "hilmkil.png")


def _reached(entry: dict, rounds: int) -> str:
    if entry["rounds_to_target"] is not None:
        return str(entry["rounds_to_target"])
    return f"not reached in {len(entry['dev_accuracy_by_round']) or rounds}"


def markdown(results: dict, rounds: int) -> str:
    target = results["target_dev_accuracy"]
    lines = [f"# Hilmkil experiment ({results['preset']['name']} preset)", "",
             f"Command: `{results['command']}`  ",
             f"Commit: {results['machine'].get('git_commit')}; general model `{results['init_from']}`, FedAvg, "
             f"{rounds} rounds of one local epoch, Dirichlet alpha {results['preset']['dirichlet_alpha']:g}.", "",
             "Target: 90% of the one-silo run's final dev accuracy = "
             + ("-" if target is None else f"{target:.4f}") + ".", "",
             "| split | silos | examples/silo | test accuracy | dev accuracy by round | rounds to target | train s |",
             "|---|---|---|---|---|---|---|"]
    for entry in results["runs"]:
        curve = " ".join(f"{value:.3f}" for value in entry["dev_accuracy_by_round"])
        std = f" ± {entry['test_accuracy_std']:.4f}" if len(entry["seeds"]) > 1 else ""
        lines.append(f"| {entry['split']} | {entry['silos']} | {entry['train_examples'] / entry['silos']:.0f} | "
                     f"{entry['test_accuracy']:.4f}{std} | {curve} | {_reached(entry, rounds)} | "
                     f"{entry['train_seconds']:.0f} |")
    lines += ["", _DEFINITIONS]
    return "\n".join(lines) + "\n"


_DEFINITIONS = """Definitions: test accuracy is the fine-tuner's (the model of the best dev round; mean ± sample
std over seeds when there are several); the dev accuracy of a round is measured after its FedAvg step (mean
over seeds); rounds to target is the first round whose dev accuracy reaches 90% of the one-silo run's after
the last round ("not reached" when no round does). One silo is centralized training (one epoch a round)."""


def plot_curves(results: dict, path) -> None:
    """Dev accuracy against rounds, a line per silo count, one panel per split; the target dashed."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator
    entries = results["runs"]
    splits = [split for split in dict.fromkeys(entry["split"] for entry in entries) if split != "both"] or ["both"]
    one = [entry for entry in entries if entry["split"] == "both"]
    figure, axes = plt.subplots(1, len(splits), figsize=(5.5 * len(splits), 4.2), squeeze=False)
    for axis, split in zip(axes.flat, splits):
        for entry in one + [entry for entry in entries if entry["split"] == split]:
            curve = entry["dev_accuracy_by_round"]
            axis.plot(range(1, len(curve) + 1), curve, marker="o", label=f"{entry['silos']} silo(s)")
        if results["target_dev_accuracy"] is not None:
            axis.axhline(results["target_dev_accuracy"], linestyle="--", color="grey", label="90% of 1 silo")
        axis.set_title(f"{'IID' if split == 'iid' else split} split")
        axis.set_xlabel("round")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.set_ylabel("dev accuracy")
        axis.legend(fontsize=7)
    figure.tight_layout()
    with atomic_write(path, "wb") as stream:
        figure.savefig(stream, format="png", dpi=110)
    plt.close(figure)

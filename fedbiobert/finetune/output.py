"""Results out: mean and standard deviation over seeds, and the printed table (the files are written
with fedbiobert/atomic.py, so nothing is ever half-written)."""
from __future__ import annotations

import statistics

# The table's columns (strict first: the existing headline; conlleval: what BioBERT/BLUE report).
NER_METRICS = ("precision", "recall", "f1", "conlleval_f1", "lenient_f1")
CLASSIFICATION_METRICS = ("accuracy", "macro_f1")
# Also averaged over seeds into the JSON record, though not printed (the table stays readable).
NER_EXTRA_METRICS = ("conlleval_precision", "conlleval_recall")


def metric_names(task: str) -> tuple[str, ...]:
    return NER_METRICS if task == "ner" else CLASSIFICATION_METRICS


def summary_names(task: str) -> tuple[str, ...]:
    """The metrics whose mean and std over seeds the JSON record holds."""
    return (*NER_METRICS, *NER_EXTRA_METRICS) if task == "ner" else CLASSIFICATION_METRICS


def summarize(runs: list[dict], names: tuple[str, ...]) -> tuple[dict, dict]:
    """Mean and sample standard deviation (0 for one run) of each metric and of train_seconds."""
    mean, std = {}, {}
    for name in (*names, "train_seconds"):
        values = [run[name] for run in runs]
        mean[name] = statistics.fmean(values)
        std[name] = statistics.stdev(values) if len(values) > 1 else 0.0
    return mean, std


def markdown_table(headers: list[str], rows: list[list]) -> str:
    def cell(value):
        return f"{value:.4f}" if isinstance(value, float) else str(value)
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(value) for value in row) + " |" for row in rows]
    return "\n".join(lines)


def results_table(record: dict) -> str:
    names = metric_names(record["task"])
    rows = [[run["seed"], *(run[name] for name in names), run["train_seconds"]] for run in record["runs"]]
    if len(record["runs"]) > 1:
        rows.append(["mean ± std", *(f"{record['mean'][n]:.4f} ± {record['std'][n]:.4f}" for n in names),
                     f"{record['mean']['train_seconds']:.1f}"])
    return markdown_table(["seed", *names, "train s"], rows)

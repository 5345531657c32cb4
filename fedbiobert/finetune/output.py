"""Results out: atomic file writes (temp file + rename, so nothing is ever half-written), mean and
standard deviation over seeds, and the printed table."""
from __future__ import annotations

import json
import os
import statistics
import tempfile
from pathlib import Path

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


def write_atomically(path: str | Path, write) -> None:
    """Call write(temp_path) on a temp file beside `path`, then rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent)
    os.close(handle)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(temporary, 0o666 & ~umask)  # mkstemp makes it private; the result should read like any file
    try:
        write(Path(temporary))
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def write_json(path: str | Path, record: dict) -> None:
    write_atomically(path, lambda temporary: temporary.write_text(json.dumps(record, indent=2) + "\n",
                                                                  encoding="utf-8"))


def write_text(path: str | Path, text: str) -> None:
    write_atomically(path, lambda temporary: temporary.write_text(text, encoding="utf-8"))


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

"""`python -m fedbiobert.finetune.exports OUT --data ...`: downstream score of every export of a pre-training run.

Fine-tunes each `OUT/round{k}` (every K-th and the last with `--every K`, only the last with `--last`;
`--baseline` adds the same architecture without pre-training as round 0) with the options of
`fedbiobert.finetune`, and writes
`evaluate.json`, `evaluate.md` (the table) and `evaluate.png` (score against round and against
pre-training wall time: the cumulative `round_seconds` of OUT/metrics.jsonl) to `--output_dir`
(default OUT/downstream), each atomically.
"""
from __future__ import annotations

import argparse
import copy
import json
import logging
import re
import sys
from pathlib import Path

from fedbiobert.atomic import atomic_write, write_json_atomically, write_text_atomically
from fedbiobert.finetune.cli import add_finetune_arguments, finetune
from fedbiobert.finetune.errors import InputError
from fedbiobert.finetune.output import markdown_table, metric_names

logger = logging.getLogger(__name__)
PROG = "fedbiobert-evaluate"
_ROUND = re.compile(r"^round(\d+)$")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", help="output folder of a pre-training run (holds round{k}/ exports)")
    parser.add_argument("--last", action="store_true", help="only the last round's export")
    parser.add_argument("--every", type=int, default=1, metavar="K",
                        help="only the exports of rounds divisible by K, and the last (default 1: every one)")
    parser.add_argument("--baseline", action="store_true", help="also the same architecture without pre-training")
    parser.add_argument("--output_dir", help="where the table and plot go (default RUN_DIR/downstream)")
    add_finetune_arguments(parser)
    return parser


def round_exports(run_dir: Path) -> list[tuple[int, Path]]:
    exports = sorted((int(match.group(1)), path) for path in run_dir.iterdir()
                     if path.is_dir() and (match := _ROUND.match(path.name)))
    if not exports:
        raise InputError(f"run folder '{run_dir}' has no round{{k}}/ exports (accepted: the --output_dir of a "
                         "pre-training run)")
    return exports


def select_exports(exports: list[tuple[int, Path]], every: int, last_only: bool) -> list[tuple[int, Path]]:
    """The exports to fine-tune: rounds divisible by `every` plus the last one (a long run writes many)."""
    if every < 1:
        raise InputError(f"--every {every} is invalid; accepted: an integer >= 1")
    if last_only:
        return exports[-1:]
    return [(number, path) for number, path in exports if number % every == 0 or number == exports[-1][0]]


def pretrain_seconds(run_dir: Path) -> dict[int, float]:
    """Round k -> pre-training seconds up to the end of round k (sum of round_seconds)."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return {}
    rounds = {}
    with path.open(encoding="utf-8") as stream:
        for line in stream:
            if '"round"' in line and line.strip():
                event = json.loads(line)
                if event.get("event") == "round" and event.get("round_seconds") is not None:
                    rounds[int(event["round"])] = float(event["round_seconds"])
    total, cumulative = 0.0, {0: 0.0}
    for number in sorted(rounds):
        total += rounds[number]
        cumulative[number] = total
    return cumulative


def baseline_options(options, first_export: Path):
    """--model none with the export's architecture and tokenizer."""
    config = json.loads((first_export / "config.json").read_text(encoding="utf-8"))
    baseline = copy.copy(options)
    baseline.model, baseline.tokenizer = "none", options.tokenizer or str(first_export)
    baseline.arch = config["model_type"]
    for name in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size"):
        setattr(baseline, name, config[name])
    return baseline


def evaluate_run(options) -> dict:
    run_dir = Path(options.run_dir)
    if not run_dir.is_dir():
        raise InputError(f"run folder '{run_dir}' does not exist")
    exports = select_exports(round_exports(run_dir), options.every, options.last)
    seconds = pretrain_seconds(run_dir)
    jobs = [(0, baseline_options(options, exports[0][1]))] if options.baseline else []
    for number, path in exports:
        job = copy.copy(options)
        job.model = str(path)
        jobs.append((number, job))
    rows = []
    for number, job in jobs:
        logger.info("fine-tuning %s", job.model)
        record = finetune(job)
        rows.append({"round": number, "model": job.model, "pretrain_seconds": seconds.get(number), **{
            key: record[key] for key in (*metric_names(record["task"]), "train_seconds")},
            "std": record["std"], "task": record["task"]})
    return {"run_dir": str(run_dir), "data": options.data, "seeds": record["seeds"], "rows": rows}


def table(result: dict) -> str:
    names = metric_names(result["rows"][0]["task"])
    rows = [[row["round"], row["pretrain_seconds"] if row["pretrain_seconds"] is not None else "-",
             *(f"{row[name]:.4f} ± {row['std'][name]:.4f}" for name in names)] for row in result["rows"]]
    return markdown_table(["round", "pre-training s", *names], rows)


def plot(result: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    main = "f1" if result["rows"][0]["task"] == "ner" else "macro_f1"
    rows = result["rows"]
    figure, (by_round, by_time) = plt.subplots(1, 2, figsize=(10, 4))
    for axis, key, label in ((by_round, "round", "pre-training round (0: none)"),
                             (by_time, "pretrain_seconds", "pre-training wall time (s)")):
        points = [(row[key], row[main], row["std"][main]) for row in rows if row[key] is not None]
        if points:
            xs, ys, errors = zip(*points)
            axis.errorbar(xs, ys, yerr=errors, marker="o", capsize=3)
        axis.set_xlabel(label)
        axis.set_ylabel(f"test {main}")
        axis.grid(alpha=0.3)
    figure.suptitle(f"downstream {main} on {Path(result['data']).name}")
    figure.tight_layout()
    with atomic_write(path, "wb", parents=True) as stream:
        figure.savefig(stream, format="png", dpi=100)
    plt.close(figure)


def main(argv: list[str] | None = None) -> None:
    from fedbiobert.logs import setup_logging
    options = build_parser().parse_args(argv)
    setup_logging(0)
    try:
        result = evaluate_run(options)
    except InputError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        sys.exit(2)
    out = Path(options.output_dir or Path(options.run_dir) / "downstream")
    text = table(result)
    write_json_atomically(out / "evaluate.json", result, parents=True)  # --output_dir may not exist yet
    write_text_atomically(out / "evaluate.md", text + "\n", parents=True)
    plot(result, out / "evaluate.png")
    print(text)
    print(f"table and plot written to {out}")


if __name__ == "__main__":
    main()

"""Look at a finished run: a per-round table, a loss plot, and the exported model filling a mask.

    python -m fedbiobert.report OUTPUT_DIR [--no-plot] [--text "the patient was treated with [MASK] ."]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from fedbiobert.metrics import read_events

DEFAULT_PROBE = "the patient was admitted with acute myocardial [MASK] ."


def latest_rounds(events: list[dict]) -> list[dict]:
    """One `round` event per round, the latest written (a metrics.jsonl of an older version could
    repeat rounds trained again after a resume), in round order."""
    latest = {event["round"]: event for event in events if event["event"] == "round"}
    return [latest[number] for number in sorted(latest)]


def round_table(events: list[dict]) -> str:
    rows = latest_rounds(events)
    header = f"{'round':>5} {'local loss':>10} {'global loss':>11} {'val loss':>8} {'± SE':>6} {'val ppl':>9} " \
             f"{'tokens/s':>9} {'MB up':>7} {'MB down':>7}"
    lines = [header, "-" * len(header)]
    for row in rows:
        lines.append(f"{row['round']:>5} {_num(row['local_loss']):>10} {_num(row['global_loss']):>11} "
                     f"{_num(row.get('val_loss')):>8} {_num(row.get('val_loss_se'), 3):>6} "
                     f"{_num(row.get('val_perplexity'), 1):>9} "
                     f"{_num(row.get('tokens_per_second'), 0):>9} {row['bytes_sent'] / 1e6:>7.2f} "
                     f"{row['bytes_received'] / 1e6:>7.2f}")
    return "\n".join(lines)


def plot_losses(events: list[dict], path: Path) -> Path | None:
    """Client-step local/global loss against wall time, with round-end validation loss."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    figure, axis = plt.subplots(figsize=(8, 4.5))
    for key, label in (("local_loss", "local (auxiliary) loss"), ("global_loss", "global (final head) loss")):
        points = [(e["seconds"], e[key]) for e in events if e["event"] == "step" and e[key] is not None
                  and (key == "local_loss" or e["role"] == _global_role(events))]
        if points:
            axis.plot(*zip(*points), ".", markersize=3, alpha=0.5, label=label)
    rounds = [(e["seconds"], e["val_loss"]) for e in latest_rounds(events) if e.get("val_loss")]
    if rounds:
        axis.plot(*zip(*rounds), "o-", color="black", label="validation loss (round end)")
    axis.set_xlabel("run wall time (s, cumulative over resumed invocations)")
    axis.set_ylabel("MLM loss")
    axis.legend()
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def _global_role(events: list[dict]) -> str:
    clients_report = any(e["role"] == "client" and e["global_loss"] is not None for e in events)
    return "client" if clients_report else "server"


def fill_mask(model_dir: Path, text: str, top_k: int = 5) -> list[str]:
    """The exported model's top predictions for the mask in `text` (proves the export loads)."""
    import torch
    from transformers import AutoModelForMaskedLM, AutoTokenizer
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    model = AutoModelForMaskedLM.from_pretrained(model_dir, local_files_only=True).eval()
    text = text.replace("[MASK]", tokenizer.mask_token)
    encoded = tokenizer(text, return_tensors="pt")
    with torch.no_grad():
        logits = model(**encoded).logits[0]
    position = (encoded["input_ids"][0] == tokenizer.mask_token_id).nonzero()[0, 0]
    # decode, not convert_ids_to_tokens: a byte-level BPE (RoBERTa) token is 'Ġof' for ' of'
    return [tokenizer.decode([token_id]).strip() for token_id in logits[position].topk(top_k).indices.tolist()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fedbiobert.report", description=__doc__.splitlines()[0])
    parser.add_argument("output_dir", type=Path)
    parser.add_argument("--no-plot", action="store_true")
    parser.add_argument("--text", default=DEFAULT_PROBE, help="a sentence with one [MASK]")
    args = parser.parse_args(argv)
    if not (args.output_dir / "metrics.jsonl").is_file():
        print(f"report: error: '{args.output_dir}' has no metrics.jsonl (is it a FedBioBERT --output_dir?)",
              file=sys.stderr)
        return 2
    events = read_events(args.output_dir)
    print(round_table(events))
    summary_path = args.output_dir / "summary.json"
    if summary_path.is_file():
        summary = json.loads(summary_path.read_text())
        print(f"\n{summary['rounds_completed']} rounds, wall {summary['wall_seconds']:.1f}s "
              f"(the last invocation: {summary.get('rounds_this_invocation')} rounds in "
              f"{summary.get('wall_seconds_this_invocation', summary['wall_seconds']):.1f}s), "
              f"{_num(summary['tokens_per_second'], 0)} tokens/s, val loss {_num(summary.get('val_loss'))} "
              f"± {_num(summary.get('val_loss_se'), 3)}, val perplexity {_num(summary['val_perplexity'], 1)}")
        for name, loss in (summary.get("val_loss_by_file") or {}).items():
            print(f"  val loss {loss:.4f}  {name}")
    if not args.no_plot and (plot := plot_losses(events, args.output_dir / "loss.png")):
        print(f"loss plot: {plot}")
    rounds = sorted(args.output_dir.glob("round[0-9]*"), key=lambda p: int(p.name[5:]) if p.name[5:].isdigit() else -1)
    if rounds:
        print(f"{rounds[-1]} fills '{args.text}' with: {fill_mask(rounds[-1], args.text)}")
    return 0


def _num(value, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


if __name__ == "__main__":
    sys.exit(main())

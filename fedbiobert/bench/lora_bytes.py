"""`python -m fedbiobert.bench.lora_bytes`: bytes per round of federated fine-tuning at a model's shape,
full-model FedAvg beside fedlora (`--aggregation` weighted/adaptive and exact), from the fine-tuner's own
accounting (finetune/aggregation.py) on a real model of that shape with the adapters injected.

    python -m fedbiobert.bench.lora_bytes                        # BERT-base shape, NER head (3 labels)
    python -m fedbiobert.bench.lora_bytes --model models/minilm-l6 --ranks 4,8,16

Nothing is trained: the sizes are those of the tensors each rule exchanges, which do not depend on the
weights. A random BERT-base (110M parameters) is built in a few seconds.
"""
from __future__ import annotations

import argparse
import sys
from types import SimpleNamespace

from fedbiobert.config.lora import DEFAULT_TARGETS

PROG = "python -m fedbiobert.bench.lora_bytes"
BASE_SHAPE = dict(vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                  intermediate_size=3072)


def _model(path: str | None, num_labels: int):
    from transformers import BertConfig, BertForTokenClassification
    from fedbiobert.finetune.modeling import load_pretrained
    if path is None:
        return BertForTokenClassification(BertConfig(**BASE_SHAPE, num_labels=num_labels))
    return load_pretrained(path, "ner", num_labels, None, 8, seed=0)[0]  # sizes do not depend on the length


def rows(path: str | None, ranks: list[int], targets: str, silos: int, num_labels: int = 3) -> list[dict]:
    from fedbiobert.finetune.aggregation import Aggregation, ExactAggregation
    from fedbiobert.finetune.fedlora import add_adapters
    from fedbiobert.server_optimizer import ServerOptimizer, ServerOptimizerSettings
    server = ServerOptimizer(ServerOptimizerSettings())
    full_state = _model(path, num_labels).state_dict()
    full = Aggregation(None, server, None).round_bytes(full_state, silos).record()
    table = [{"rule": "full-model FedAvg", "rank": None, **full, "vs_full": 1.0}]
    for rank in ranks:
        model = _model(path, num_labels)
        options = SimpleNamespace(lora_rank=rank, lora_alpha=2.0 * rank, lora_dropout=0.0, lora_targets=targets,
                                  lora_exchange_head=True)
        keys = add_adapters(model, options, seed=0)
        state = model.state_dict()
        for rule in (Aggregation(keys, server, None), ExactAggregation(keys, server, None, 2.0, 0)):
            record = rule.round_bytes(state, silos).record()
            ratio = (record["bytes_up_per_round"] + record["bytes_down_per_round"]) / \
                (full["bytes_up_per_round"] + full["bytes_down_per_round"])
            name = "fedlora weighted/adaptive" if rule.name == "weighted" else "fedlora exact"
            table.append({"rule": name, "rank": rank, **record, "vs_full": ratio})
    return table


def markdown(table: list[dict], silos: int) -> str:
    lines = [f"Bytes per round, {silos} silos (fp32 tensors as exchanged):", "",
             "| rule | rank | up per silo (MB) | down per silo (MB) | up+down per round (MB) | vs full-model FedAvg |",
             "|---|---|---|---|---|---|"]
    for row in table:
        total = (row["bytes_up_per_round"] + row["bytes_down_per_round"]) / 1e6
        lines.append(f"| {row['rule']} | {row['rank'] or '-'} | {row['bytes_up_per_silo'] / 1e6:.3f} | "
                     f"{row['bytes_down_per_silo'] / 1e6:.3f} | {total:.2f} | {100 * row['vs_full']:.2f}% |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="an HF folder (default: a random model of BERT-base shape)")
    parser.add_argument("--ranks", default="8", help="comma-separated LoRA ranks (default 8)")
    parser.add_argument("--targets", default=",".join(DEFAULT_TARGETS), help="--lora_targets (default query,value)")
    parser.add_argument("--silos", type=int, default=4, help="silos per round (default 4)")
    args = parser.parse_args(argv)
    try:
        ranks = [int(part) for part in args.ranks.split(",") if part.strip()]
    except ValueError:
        parser.exit(2, f"{PROG}: error: --ranks {args.ranks!r} (accepted: comma-separated integers)\n")
    if args.silos < 1:
        parser.exit(2, f"{PROG}: error: --silos {args.silos} (accepted: >= 1)\n")
    from fedbiobert.finetune.errors import InputError
    try:
        print(markdown(rows(args.model, ranks, args.targets, args.silos), args.silos), end="")
    except InputError as error:
        parser.exit(2, f"{PROG}: error: {error}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

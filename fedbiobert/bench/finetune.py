"""`python -m fedbiobert.bench.finetune`: fine-tuning throughput of our loop against a plain HF loop.

Both train a copy of the same model on the same padded batches (NER batches from the first sentences
of `--data`), interleaved: each pass times `--steps` steps of one loop then of the other (the order
alternates between passes), so a slow minute on a shared machine hits both. Prints tokens/s per
pass, the medians and the ratio ours / plain.

The plain loop is what a user would write by hand: torch AdamW, transformers'
get_linear_schedule_with_warmup, loss.backward, clip_grad_norm_, step, zero_grad.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path

import torch
from transformers import get_linear_schedule_with_warmup

from fedbiobert.finetune.batching import training_batches
from fedbiobert.finetune.data_ner import encode_ner, label_list, read_conll
from fedbiobert.finetune.modeling import RandomModelSize, build_random, load_pretrained
from fedbiobert.finetune.train import Hyper, LinearSchedule, finetune_optimizer, train_epoch

DEFAULT_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "ner" / "ncbi_disease"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m fedbiobert.bench.finetune", description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="NER folder (its train.tsv is used)")
    parser.add_argument("--model", default="none", help="HF folder, or none: a random BERT of the sizes below")
    parser.add_argument("--tokenizer", default=str(DEFAULT_DATA.parents[1] / "vocab" / "scivocab_uncased.txt"))
    parser.add_argument("--hidden_size", type=int, default=128)
    parser.add_argument("--num_hidden_layers", type=int, default=4)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--max_len", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per loop per pass")
    parser.add_argument("--repeat", type=int, default=3, help="interleaved passes")
    parser.add_argument("--threads", type=int)
    return parser


def prepare(options):
    sentences = read_conll(Path(options.data) / "train.tsv")[: options.batch_size * (options.steps + 1)]
    labels = label_list(sentences)
    if options.model == "none":
        size = RandomModelSize("bert", options.hidden_size, options.num_hidden_layers, 2, 4 * options.hidden_size)
        model, tokenizer = build_random(size, "ner", len(labels), options.tokenizer, options.max_len, seed=0)
    else:
        model, tokenizer = load_pretrained(options.model, "ner", len(labels), None, options.max_len, seed=0)
    examples = encode_ner(sentences, tokenizer, labels, options.max_len)
    batches = training_batches(examples, options.batch_size, seed=0, pad_id=tokenizer.pad_token_id)
    return model, batches[: options.steps + 1]


def ours(model, batches, hyper: Hyper) -> float:
    optimizer = finetune_optimizer(model, hyper)
    schedule = LinearSchedule(len(batches), hyper)
    train_epoch(model, batches[:1], optimizer, schedule, 0, hyper.max_grad_norm)  # warm-up, untimed
    started = time.perf_counter()
    train_epoch(model, batches[1:], optimizer, schedule, 1, hyper.max_grad_norm)
    return time.perf_counter() - started


def plain_hf(model, batches, hyper: Hyper) -> float:
    optimizer = torch.optim.AdamW(model.parameters(), lr=hyper.lr, weight_decay=hyper.weight_decay)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(0.1 * len(batches)), len(batches))
    model.train()
    started = None
    for index, batch in enumerate(batches):
        if index == 1:
            started = time.perf_counter()  # the first step is the untimed warm-up
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), hyper.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> None:
    options = build_parser().parse_args(argv)
    if options.threads:
        torch.set_num_threads(options.threads)
    model, batches = prepare(options)
    tokens = sum(int(batch["attention_mask"].sum()) for batch in batches[1:])
    hyper = Hyper(lr=5e-5, batch_size=options.batch_size)
    rates = {"ours": [], "plain": []}
    for repeat in range(options.repeat):
        order = (("ours", ours), ("plain", plain_hf))
        for name, loop in order if repeat % 2 == 0 else order[::-1]:
            seconds = loop(copy.deepcopy(model), batches, hyper)
            rates[name].append(tokens / seconds)
        print(f"pass {repeat + 1}: ours {rates['ours'][-1]:,.0f} tok/s, plain HF {rates['plain'][-1]:,.0f} tok/s")
    ours_rate, plain_rate = statistics.median(rates["ours"]), statistics.median(rates["plain"])
    print(f"median over {options.repeat} passes of {len(batches) - 1} steps (batch {options.batch_size}, "
          f"{tokens:,} tokens): ours {ours_rate:,.0f} tok/s, plain HF loop {plain_rate:,.0f} tok/s, "
          f"ratio ours/plain {ours_rate / plain_rate:.3f}")


if __name__ == "__main__":
    main()

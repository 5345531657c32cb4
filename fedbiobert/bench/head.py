"""Micro-benchmark: MLM head applied at masked positions only vs at every position.

This file owns one measurement that justifies the design of mlm.py: on a small BERT
(hidden 128, 4 layers, vocab 30522) the [*,H] x [H,V] vocabulary projection dominates a
training step, so computing it for the ~15% masked positions only should be much faster
than HF's default of logits everywhere. Run: `python -m fedbiobert.bench.head`.
"""

import logging
import statistics
import sys
import time

import torch

from fedbiobert.model.build import ModelSpec, build_full_model
from fedbiobert.model.mlm import IGNORE_INDEX, gather_masked, masked_positions, masked_targets, mlm_loss
from fedbiobert.model.split import split_model

logger = logging.getLogger(__name__)

BENCH_SPEC = ModelSpec(arch="bert", vocab_size=30522, hidden_size=128, num_attention_heads=2,
                       intermediate_size=512, num_layers=4, max_len=128, pad_token_id=0)
BATCH_SIZE = 8
MASK_FRACTION = 0.15
WARMUP_RUNS = 2


def _random_batch(spec: ModelSpec, generator: torch.Generator) -> dict:
    shape = (BATCH_SIZE, spec.max_len)
    input_ids = torch.randint(1, spec.vocab_size, shape, generator=generator)
    chosen = torch.rand(shape, generator=generator) < MASK_FRACTION
    labels = torch.where(chosen, input_ids, torch.full_like(input_ids, IGNORE_INDEX))
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": labels}


def _time_once(step, model: torch.nn.Module) -> float:
    model.zero_grad(set_to_none=True)
    started = time.perf_counter()
    step()
    return time.perf_counter() - started


def _interleaved_medians(variants: dict, repeats: int) -> dict:
    """Median seconds per variant; runs alternate so that load from other processes hits both alike."""
    durations = {name: [] for name in variants}
    for run in range(WARMUP_RUNS + repeats):
        for name, (step, model) in variants.items():
            seconds = _time_once(step, model)
            if run >= WARMUP_RUNS:  # the first runs pay for allocator and kernel warm-up
                durations[name].append(seconds)
    return {name: statistics.median(values) for name, values in durations.items()}


def _masked_only_step(batch: dict, seed: int):
    client, server = split_model(build_full_model(BENCH_SPEC, seed=seed), 0, "server")
    model = torch.nn.ModuleList([client, server])
    positions = masked_positions(batch["labels"])
    targets = masked_targets(batch["labels"], positions)

    def step():
        hidden = server(client(batch["input_ids"], batch["attention_mask"]), batch["attention_mask"])
        mlm_loss(server.final_logits(gather_masked(hidden, positions)), targets).backward()
    return step, model


def _all_positions_step(batch: dict, seed: int):
    model = build_full_model(BENCH_SPEC, seed=seed)

    def step():
        model(**batch).loss.backward()
    return step, model


def main(repeats: int = 10) -> dict:
    """Time both variants (1 CPU thread, median of `repeats`), log them and return them."""
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    torch.set_num_threads(1)
    batch = _random_batch(BENCH_SPEC, torch.Generator().manual_seed(0))
    medians = _interleaved_medians({"masked_only": _masked_only_step(batch, seed=0),
                                    "all_positions": _all_positions_step(batch, seed=0)}, repeats)
    masked_only, all_positions = medians["masked_only"], medians["all_positions"]
    result = {"masked_only_s": masked_only, "all_positions_s": all_positions,
              "speedup": all_positions / masked_only,
              "masked_positions": int(masked_positions(batch["labels"]).numel())}
    logger.info("forward+backward, batch %d x %d, %d masked positions, 1 thread, median of %d:",
                BATCH_SIZE, BENCH_SPEC.max_len, result["masked_positions"], repeats)
    logger.info("  head at masked positions only: %.1f ms", 1000 * masked_only)
    logger.info("  head at every position:        %.1f ms", 1000 * all_positions)
    logger.info("  ratio (every / masked only):   %.2fx", result["speedup"])
    return result


if __name__ == "__main__":
    main()

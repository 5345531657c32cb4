"""Examples (anything with `input_ids` and `labels`) into padded tensor batches.

Training order is a seeded permutation per epoch (`epoch_order`), so a silo trained in a federated
round and the same data trained centrally see the same batches when their seeds agree. With
`group_by_length` K > 1 the permutation is cut into windows of K batches, each sorted by length, so a
batch holds examples of similar length and pads less (`length_grouped`).
"""
from __future__ import annotations

import torch

from fedbiobert.constants import IGNORE_INDEX


def collate(examples: list, pad_id: int) -> dict[str, torch.Tensor]:
    """input_ids and attention_mask padded to the longest example; token labels padded with IGNORE_INDEX.
    Examples with `features` (a probe's cached encoder output, probe.CachedExample) add them:
    [length, hidden] per example padded with zeros to [batch, width, hidden], or [hidden] stacked."""
    width = max(len(example.input_ids) for example in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
    token_labels = isinstance(examples[0].labels, list)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long) if token_labels else \
        torch.tensor([example.labels for example in examples], dtype=torch.long)
    for row, example in enumerate(examples):
        size = len(example.input_ids)
        input_ids[row, :size] = torch.tensor(example.input_ids)
        attention_mask[row, :size] = 1
        if token_labels:
            labels[row, :size] = torch.tensor(example.labels)
    batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
    if hasattr(examples[0], "features"):
        batch["features"] = _pad_features([example.features for example in examples], width)
    return batch


def _pad_features(features: list[torch.Tensor], width: int) -> torch.Tensor:
    if features[0].dim() == 1:
        return torch.stack(features)
    padded = features[0].new_zeros((len(features), width, features[0].shape[-1]))
    for row, value in enumerate(features):
        padded[row, :len(value)] = value
    return padded


def epoch_order(num_examples: int, seed: int) -> list[int]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(num_examples, generator=generator).tolist()


def length_grouped(order: list[int], lengths: list[int], batch_size: int, group: int, seed: int) -> list[int]:
    """`order` cut into windows of `group` x `batch_size` examples, each window sorted by length (longest
    first; ties keep `order`), then its batches put in a seeded random order.

    Why: a batch is padded to its longest example, and sentence lengths spread widely (NCBI-disease at
    64 sub-tokens: a random batch of 16 is 1.8x its real tokens, windows of 4 batches 1.2x, measured on
    300 training sentences), and a fine-tuning step's cost is proportional to the padded tokens. A window
    of a few batches keeps most of the shuffle's randomness: which examples share a batch still changes
    every epoch (HF Trainer's group_by_length sorts windows of 50 batches)."""
    window = group * batch_size
    grouped = [sorted(order[start:start + window], key=lambda index: -lengths[index])
               for start in range(0, len(order), window)]
    batches = [chunk[start:start + batch_size] for chunk in grouped for start in range(0, len(chunk), batch_size)]
    # a last, short batch stays last (as without grouping) so every other batch is full
    full, short = (batches[:-1], batches[-1:]) if len(batches[-1]) < batch_size else (batches, [])
    shuffled = [full[index] for index in epoch_order(len(full), seed + 1)] + short
    return [index for batch in shuffled for index in batch]


def training_batches(examples: list, batch_size: int, seed: int, pad_id: int,
                     group_by_length: int = 0) -> list[dict[str, torch.Tensor]]:
    """The epoch's batches in the order of seed; group_by_length K > 1: windows of K batches sorted by length
    (length_grouped), 0 or 1: none."""
    order = epoch_order(len(examples), seed)
    if group_by_length > 1:
        order = length_grouped(order, [len(example.input_ids) for example in examples], batch_size,
                               group_by_length, seed)
    return [collate([examples[index] for index in order[start:start + batch_size]], pad_id)
            for start in range(0, len(order), batch_size)]


def eval_batches(examples: list, batch_size: int, pad_id: int) -> tuple[list[int], list[dict[str, torch.Tensor]]]:
    """Batches of examples sorted by length (less padding); returns the order used, to undo it."""
    order = sorted(range(len(examples)), key=lambda index: len(examples[index].input_ids))
    return order, [collate([examples[index] for index in order[start:start + batch_size]], pad_id)
                   for start in range(0, len(order), batch_size)]


def num_batches(num_examples: int, batch_size: int) -> int:
    return -(-num_examples // batch_size)

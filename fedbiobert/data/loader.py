"""Masked training and validation batches of a client's blocks.

Training batches come from a ``torch.utils.data.DataLoader`` whose dataset items are whole
batches (``batch_size=None``), so ``num_workers``/``pin_memory`` keep their usual meaning.
Which blocks form batch ``i`` is fixed up front from ``seed``, and batch ``i`` is masked with
a generator seeded from ``(seed, i)``: the batches are identical for any ``num_workers``.
"""
from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Dataset

from fedbiobert.data.masking import MaskingSpec, mask_tokens
from fedbiobert.data.token_cache import TokenizedCorpus

logger = logging.getLogger(__name__)


@dataclass
class Batch:
    """One MLM batch: masked inputs, attention mask (1 = real token) and labels (-100 = ignore)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor

    @property
    def num_tokens(self) -> int:
        """Number of non-pad tokens in the batch."""
        return int(self.attention_mask.sum())

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        """A copy of the batch on ``device``."""
        return Batch(
            input_ids=self.input_ids.to(device, non_blocking=non_blocking),
            attention_mask=self.attention_mask.to(device, non_blocking=non_blocking),
            labels=self.labels.to(device, non_blocking=non_blocking),
        )

    def pin_memory(self) -> Batch:
        """Called by DataLoader(pin_memory=True): page-locked copies for async transfer."""
        return Batch(self.input_ids.pin_memory(), self.attention_mask.pin_memory(), self.labels.pin_memory())


def batch_seed(seed: int, batch_index: int) -> int:
    """Generator seed of batch ``batch_index``: a stable 63-bit hash of (seed, batch_index)."""
    digest = hashlib.sha256(f"{seed}/{batch_index}".encode("ascii")).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def make_batch(corpus: TokenizedCorpus, block_indices: torch.Tensor, spec: MaskingSpec, seed: int) -> Batch:
    """Mask the blocks at ``block_indices`` with a generator seeded with ``seed``."""
    input_ids = corpus.blocks[block_indices]
    generator = torch.Generator().manual_seed(seed)
    masked, labels = mask_tokens(input_ids, spec, generator)
    attention_mask = (input_ids != corpus.pad_token_id).long()
    return Batch(input_ids=masked, attention_mask=attention_mask, labels=labels)


class _MaskedBatches(Dataset):
    """Item ``i`` is batch ``i`` of a precomputed plan [num_batches, batch_size] of block ids."""

    def __init__(self, corpus: TokenizedCorpus, plan: torch.Tensor, spec: MaskingSpec, seed: int):
        self.corpus, self.plan, self.spec, self.seed = corpus, plan, spec, seed

    def __len__(self) -> int:
        return len(self.plan)

    def __getitem__(self, batch_index: int) -> Batch:
        return make_batch(self.corpus, self.plan[batch_index], self.spec, batch_seed(self.seed, batch_index))


def client_batches(
    corpus: TokenizedCorpus,
    indices: torch.Tensor,
    batch_size: int,
    num_batches: int,
    spec: MaskingSpec,
    seed: int,
    num_workers: int = 0,
    pin_memory: bool = False,
) -> Iterable[Batch]:
    """Exactly ``num_batches`` masked batches of ``batch_size`` blocks drawn from ``indices``."""
    _check_int("batch_size", batch_size, 1)
    _check_int("num_batches", num_batches, 0)
    _check_int("num_workers", num_workers, 0)
    indices = torch.as_tensor(indices, dtype=torch.int64).flatten()
    if num_batches > 0 and len(indices) == 0:
        raise ValueError(
            f"indices is empty but {num_batches} batches were asked for (accepted: at least one block)"
        )
    plan = sample_plan(indices, batch_size, num_batches, seed)
    return DataLoader(
        _MaskedBatches(corpus, plan, spec, seed),
        batch_size=None,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=pin_memory,
    )


def _check_int(name: str, value: int, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} {value!r} is invalid (accepted: an int >= {minimum})")


def sample_plan(indices: torch.Tensor, batch_size: int, num_batches: int, seed: int) -> torch.Tensor:
    """Block ids of each batch, [num_batches, batch_size]: seeded permutations of
    ``indices`` laid end to end (a new permutation each time one is used up)."""
    needed = batch_size * num_batches
    generator = torch.Generator().manual_seed(batch_seed(seed, -1))
    permutations, drawn = [], 0
    while drawn < needed:
        permutations.append(indices[torch.randperm(len(indices), generator=generator)])
        drawn += len(indices)
    flat = torch.cat(permutations) if permutations else torch.zeros(0, dtype=torch.int64)
    return flat[:needed].view(num_batches, batch_size)


def validation_batches(
    corpus: TokenizedCorpus,
    indices: torch.Tensor,
    batch_size: int,
    spec: MaskingSpec,
    seed: int,
    max_batches: int | None,
) -> list[Batch]:
    """Deterministic masked batches over the first ``max_batches * batch_size`` of ``indices``
    (all of them when ``max_batches`` is None); the last batch may be smaller."""
    _check_int("batch_size", batch_size, 1)
    if max_batches is not None:
        _check_int("max_batches", max_batches, 0)
    indices = torch.as_tensor(indices, dtype=torch.int64).flatten()
    if max_batches is not None:
        indices = indices[:max_batches * batch_size]
    # torch.split of an empty tensor yields one empty chunk, which is no batch at all.
    chunks = torch.split(indices, batch_size) if len(indices) else ()
    return [make_batch(corpus, chunk, spec, batch_seed(seed, i)) for i, chunk in enumerate(chunks)]

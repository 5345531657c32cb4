"""Masked training and validation batches of a client's blocks.

Training batches come from one ``torch.utils.data.DataLoader`` per client process (`BatchLoader`),
made once and kept for every silo, round and local round: with ``num_workers > 0`` its workers are
forked once (``persistent_workers``) instead of for every (silo, round, local round). Its dataset
items are whole batches (``batch_size=None``) and the plan it serves is switched per call of
`BatchLoader.batches`: the sampler, which runs in this process, yields one key per batch, (the
block ids of batch ``i``, the masking seed of batch ``i``), so a worker needs nothing but the key.
Which blocks form batch ``i`` is fixed up front from ``seed``, and batch ``i`` is masked with a
generator seeded from ``(seed, i)``: the batches are identical for any ``num_workers``.
"""
from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

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


class _MaskedBlocks(Dataset):
    """Item ``(block_ids, seed)``: those blocks masked with a generator seeded with ``seed``."""

    def __init__(self, corpus: TokenizedCorpus, spec: MaskingSpec):
        self.corpus, self.spec = corpus, spec

    def __getitem__(self, key: tuple[torch.Tensor, int]) -> Batch:
        block_ids, seed = key
        return make_batch(self.corpus, block_ids, self.spec, seed)


class _PlanKeys(Sampler):
    """The keys of the plan being served: batch ``i`` is (plan row ``i``, batch_seed(seed, i))."""

    def __init__(self):
        self.plan, self.seed = torch.zeros((0, 0), dtype=torch.int64), 0

    def __len__(self) -> int:
        return len(self.plan)

    def __iter__(self):
        plan, seed = self.plan, self.seed  # read now: a later switch of plan does not change this pass
        return ((plan[i], batch_seed(seed, i)) for i in range(len(plan)))


class BatchLoader:
    """Exactly ``num_batches`` masked batches of ``batch_size`` blocks per call of `batches`, from
    one DataLoader (and, with ``num_workers > 0``, one set of worker processes) for its lifetime."""

    def __init__(self, corpus: TokenizedCorpus, batch_size: int, num_batches: int, spec: MaskingSpec,
                 num_workers: int = 0, pin_memory: bool = False):
        _check_int("batch_size", batch_size, 1)
        _check_int("num_batches", num_batches, 0)
        _check_int("num_workers", num_workers, 0)
        self.batch_size, self.num_batches = batch_size, num_batches
        self._keys = _PlanKeys()
        # Its own generator: the workers' base seeds (unused: masking is seeded per key) are not drawn
        # from the global one, whose draws batches() makes explicit instead.
        self.loader = DataLoader(_MaskedBlocks(corpus, spec), batch_size=None, sampler=self._keys,
                                 num_workers=num_workers, pin_memory=pin_memory,
                                 persistent_workers=num_workers > 0, generator=torch.Generator().manual_seed(0))

    def batches(self, indices: torch.Tensor, seed: int) -> Iterator[Batch]:
        """The batches drawn from ``indices`` with ``seed`` (see sample_plan). One pass at a time:
        a new call ends the previous pass (its unread batches are dropped)."""
        indices = torch.as_tensor(indices, dtype=torch.int64).flatten()
        if self.num_batches > 0 and len(indices) == 0:
            raise ValueError(
                f"indices is empty but {self.num_batches} batches were asked for (accepted: at least one block)"
            )
        self._keys.plan = sample_plan(indices, self.batch_size, self.num_batches, seed)
        self._keys.seed = seed
        # One draw from the global generator per pass, for any num_workers, as when every pass made its
        # own DataLoader iterator (each drew its base seed there): the dropout streams seeded before a
        # silo trains, and so every run, stay what they were and equal across --num_workers.
        torch.empty((), dtype=torch.int64).random_()
        # With persistent workers this resets the one iterator: the workers drop what they had
        # prefetched of the previous pass and start on this plan's keys.
        return iter(self.loader)


def silo_batches(
    corpus: TokenizedCorpus,
    indices: torch.Tensor,
    batch_size: int,
    num_batches: int,
    spec: MaskingSpec,
    seed: int,
    num_workers: int = 0,
    pin_memory: bool = False,
) -> Iterator[Batch]:
    """Exactly ``num_batches`` masked batches of ``batch_size`` blocks drawn from ``indices``
    (a one-pass BatchLoader)."""
    return BatchLoader(corpus, batch_size, num_batches, spec, num_workers, pin_memory).batches(indices, seed)


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

"""Validation hold-out and federated client partitions of a TokenizedCorpus.

All functions work on block indices and are deterministic for a given seed. Schemes:

* ``random``    IID: a seeded shuffle split into near-equal parts.
* ``by_file``   the unit is the corpus file (a natural silo, e.g. one institution).
* ``label``     the unit is the sidecar label of a block (e.g. a clinical specialty), or
                its file name for files without a sidecar.
* ``dirichlet`` per file, client shares ~ Dirichlet(alpha): label-skew style non-IID
                (small alpha -> very skewed).

For ``by_file``/``label``: with at least as many units as clients, whole units go to
clients greedily (largest unit first, to the client holding fewest blocks); with more
clients than units, each unit gets a number of clients proportional to its size (at least
one, largest-remainder rounding) and its blocks are split contiguously among them.
"""
from __future__ import annotations

import heapq
import logging

import numpy as np
import torch

from fedbiobert.data.token_cache import TokenizedCorpus

from fedbiobert.constants import PARTITION_SCHEMES

logger = logging.getLogger(__name__)

MAX_DIRICHLET_ATTEMPTS = 100


def split_validation(corpus: TokenizedCorpus) -> tuple[torch.Tensor, torch.Tensor]:
    """(training, validation) block indices: the validation blocks are those packed from held-out
    documents (see token_cache.held_out_documents), so no document is on both sides."""
    held_out = corpus.held_out if corpus.held_out is not None else torch.zeros(len(corpus), dtype=torch.bool)
    train_idx, val_idx = (~held_out).nonzero().flatten(), held_out.nonzero().flatten()
    logger.info("validation split: %d train / %d validation blocks", len(train_idx), len(val_idx))
    return train_idx, val_idx


def validation_sample(corpus: TokenizedCorpus, val_idx: torch.Tensor, num_blocks: int | None,
                      seed: int) -> torch.Tensor:
    """At most ``num_blocks`` of the validation blocks (all of them when None or when there are
    fewer), drawn from every file in proportion to its validation blocks (largest remainder, at
    least one per file when ``num_blocks`` allows), seeded per file; sorted."""
    val = torch.as_tensor(val_idx, dtype=torch.int64).flatten().numpy()
    if num_blocks is None or len(val) <= num_blocks:
        return torch.from_numpy(np.sort(val).astype(np.int64))
    sources = corpus.source[torch.from_numpy(val)].numpy()
    files = np.unique(sources)
    by_file = [val[sources == file_index] for file_index in files]
    sizes = np.array([len(blocks) for blocks in by_file])
    counts = silos_per_unit(sizes, num_blocks) if num_blocks >= len(files) else _largest_remainder(
        sizes, num_blocks)
    chosen = [blocks[np.random.default_rng([seed, int(file_index)]).permutation(len(blocks))[:count]]
              for file_index, blocks, count in zip(files, by_file, counts)]
    return _sorted_tensor(chosen)


def _largest_remainder(sizes: np.ndarray, total: int) -> np.ndarray:
    """Shares of ``total`` proportional to ``sizes`` (some may be 0)."""
    quotas = total * sizes / sizes.sum()
    counts = np.floor(quotas).astype(np.int64)
    for index in np.argsort(-(quotas - counts), kind="stable")[:total - counts.sum()]:
        counts[index] += 1
    return counts


def _sorted_tensor(parts: list[np.ndarray]) -> torch.Tensor:
    joined = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    return torch.from_numpy(np.sort(joined).astype(np.int64))


def partition(
    corpus: TokenizedCorpus,
    train_idx: torch.Tensor,
    n_clients: int,
    scheme: str,
    seed: int,
    dirichlet_alpha: float = 0.5,
) -> list[torch.Tensor]:
    """Split ``train_idx`` into ``n_clients`` disjoint, non-empty, sorted index tensors."""
    train = _checked_arguments(corpus, train_idx, n_clients, scheme)
    if scheme == "random":
        parts = _random_parts(train, n_clients, seed)
    elif scheme == "dirichlet":
        parts = _dirichlet_parts(corpus, train, n_clients, seed, dirichlet_alpha)
    else:
        parts = _unit_parts(_unit_groups(corpus, train, scheme), n_clients, scheme)
    sizes = [len(part) for part in parts]
    logger.info("partition %s over %d clients: blocks per client %s", scheme, n_clients, sizes)
    return [torch.from_numpy(np.sort(part).astype(np.int64)) for part in parts]


def _checked_arguments(
    corpus: TokenizedCorpus, train_idx: torch.Tensor, n_clients: int, scheme: str
) -> np.ndarray:
    """The training indices as a numpy array, once scheme, indices and n_clients are valid."""
    if scheme not in PARTITION_SCHEMES:
        raise ValueError(f"partition scheme '{scheme}' is unknown (accepted: {', '.join(PARTITION_SCHEMES)})")
    train = _checked_train_indices(corpus, train_idx)
    if isinstance(n_clients, bool) or not isinstance(n_clients, int) or n_clients < 1:
        raise ValueError(
            f"n_clients {n_clients!r} is invalid for scheme '{scheme}' over {len(train)} training blocks "
            "(accepted: an int >= 1)"
        )
    if len(train) < n_clients:
        raise ValueError(
            f"scheme '{scheme}' cannot give {n_clients} clients a block each from {len(train)} "
            "training blocks (accepted: n_clients <= number of training blocks: lower --n_clients or "
            "--max_len, or add text)"
        )
    return train


def _checked_train_indices(corpus: TokenizedCorpus, train_idx: torch.Tensor) -> np.ndarray:
    train = torch.as_tensor(train_idx, dtype=torch.int64).flatten().numpy()
    if len(np.unique(train)) != len(train):
        duplicates = len(train) - len(np.unique(train))
        raise ValueError(f"train_idx holds {duplicates} duplicate(s) (accepted: distinct block indices)")
    if len(train) and (train.min() < 0 or train.max() >= len(corpus)):
        raise ValueError(
            f"train_idx spans [{train.min()}, {train.max()}] "
            f"(accepted: block indices in [0, {len(corpus) - 1}])"
        )
    return train


def _random_parts(train: np.ndarray, n_clients: int, seed: int) -> list[np.ndarray]:
    shuffled = train[np.random.default_rng(seed).permutation(len(train))]
    return np.array_split(shuffled, n_clients)


def _unit_groups(corpus: TokenizedCorpus, train: np.ndarray, scheme: str) -> list[np.ndarray]:
    """Training blocks grouped by unit (file or label), units in order of first block."""
    if scheme == "by_file":
        keys = corpus.source[torch.from_numpy(train)].tolist()
    else:
        keys = [corpus.unit[i] for i in train.tolist()]
    groups: dict[object, list[int]] = {}
    for key, block in zip(keys, train.tolist()):
        groups.setdefault(key, []).append(block)
    first_block = {key: min(blocks) for key, blocks in groups.items()}
    ordered = sorted(groups, key=first_block.__getitem__)
    return [np.sort(np.asarray(groups[key], dtype=np.int64)) for key in ordered]


def _unit_parts(groups: list[np.ndarray], n_clients: int, scheme: str) -> list[np.ndarray]:
    if n_clients <= len(groups):
        return _assign_whole_units(groups, n_clients)
    sizes = np.array([len(group) for group in groups])
    seats = silos_per_unit(sizes, n_clients)
    logger.debug("scheme %s: clients per unit %s for unit sizes %s", scheme, seats.tolist(), sizes.tolist())
    return [chunk for group, count in zip(groups, seats) for chunk in np.array_split(group, count)]


def _assign_whole_units(groups: list[np.ndarray], n_clients: int) -> list[np.ndarray]:
    """Largest unit first, each to the client with fewest blocks so far (ties: lowest client)."""
    order = sorted(range(len(groups)), key=lambda unit: (-len(groups[unit]), unit))
    load_heap = [(0, client) for client in range(n_clients)]
    assigned: list[list[np.ndarray]] = [[] for _ in range(n_clients)]
    for unit in order:
        load, client = heapq.heappop(load_heap)
        assigned[client].append(groups[unit])
        heapq.heappush(load_heap, (load + len(groups[unit]), client))
    return [np.concatenate(parts) for parts in assigned]


def silos_per_unit(sizes: np.ndarray, n_clients: int) -> np.ndarray:
    """Seats per unit, proportional to size by largest remainder, each in [1, size].

    Requires ``len(sizes) <= n_clients <= sizes.sum()``.
    """
    sizes = np.asarray(sizes, dtype=np.int64)
    quotas = n_clients * sizes / sizes.sum()
    seats = np.clip(np.floor(quotas).astype(np.int64), 1, sizes)
    while seats.sum() < n_clients:
        # Largest remainder first; units whose every block already has a client are full.
        remainders = np.where(seats < sizes, quotas - seats, -np.inf)
        seats[int(np.argmax(remainders))] += 1
    while seats.sum() > n_clients:
        # The "at least one" floor overshot: take from the most over-served unit.
        surplus = np.where(seats > 1, seats - quotas, -np.inf)
        seats[int(np.argmax(surplus))] -= 1
    return seats


def _dirichlet_parts(
    corpus: TokenizedCorpus, train: np.ndarray, n_clients: int, seed: int, alpha: float
) -> list[np.ndarray]:
    if not alpha > 0:
        raise ValueError(f"dirichlet_alpha {alpha!r} is invalid (accepted: a float > 0)")
    file_of_block = corpus.source[torch.from_numpy(train)].numpy()
    file_blocks = [train[file_of_block == f] for f in np.unique(file_of_block)]
    for attempt in range(MAX_DIRICHLET_ATTEMPTS):
        parts = _dirichlet_attempt(file_blocks, n_clients, seed + attempt, alpha)
        if all(len(part) for part in parts):
            if attempt:
                logger.info("dirichlet partition needed %d retries to give every client a block", attempt)
            return parts
    raise ValueError(
        f"scheme 'dirichlet' (alpha {alpha}) left a client empty in {MAX_DIRICHLET_ATTEMPTS} seeded attempts "
        f"for {n_clients} clients over {len(train)} blocks (accepted: fewer clients or a larger alpha)"
    )


def _dirichlet_attempt(
    file_blocks: list[np.ndarray], n_clients: int, seed: int, alpha: float
) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = [[] for _ in range(n_clients)]
    for blocks in file_blocks:
        shuffled = blocks[rng.permutation(len(blocks))]
        shares = rng.dirichlet(np.full(n_clients, alpha))
        cuts = np.floor(np.cumsum(shares)[:-1] * len(blocks)).astype(np.int64)
        for client, chunk in enumerate(np.split(shuffled, cuts)):
            parts[client].append(chunk)
    return [np.concatenate(chunks) for chunks in parts]

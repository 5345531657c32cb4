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

logger = logging.getLogger(__name__)

PARTITION_SCHEMES = ("random", "by_file", "dirichlet", "label")
MAX_DIRICHLET_ATTEMPTS = 100


def split_validation(
    corpus: TokenizedCorpus, val_ratio: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Hold out about ``val_ratio`` of each file's blocks (>= 1 if it has >= 2 blocks)."""
    if not 0.0 <= val_ratio < 1.0:
        raise ValueError(f"val_ratio {val_ratio!r} is out of range (accepted: 0 <= val_ratio < 1)")
    train_parts, val_parts = [], []
    for file_index in range(len(corpus.files)):
        blocks = (corpus.source == file_index).nonzero().flatten().numpy()
        num_val = _num_validation_blocks(len(blocks), val_ratio)
        # Seeding per file keeps each file's split independent of the other files.
        order = np.random.default_rng([seed, file_index]).permutation(len(blocks))
        val_parts.append(blocks[order[:num_val]])
        train_parts.append(blocks[order[num_val:]])
    train_idx, val_idx = _sorted_tensor(train_parts), _sorted_tensor(val_parts)
    logger.info("validation split: %d train / %d validation blocks", len(train_idx), len(val_idx))
    return train_idx, val_idx


def _num_validation_blocks(num_blocks: int, val_ratio: float) -> int:
    if num_blocks < 2 or val_ratio == 0.0:
        return 0
    return min(num_blocks - 1, max(1, round(num_blocks * val_ratio)))


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
    seats = clients_per_unit(sizes, n_clients)
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


def clients_per_unit(sizes: np.ndarray, n_clients: int) -> np.ndarray:
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


def client_weights(parts: list[torch.Tensor]) -> list[float]:
    """FedAvg weights: client k gets n_k / sum_j n_j, n_k its number of training blocks."""
    counts = [len(part) for part in parts]
    total = sum(counts)
    if total == 0:
        raise ValueError(f"client parts have sizes {counts} (accepted: at least one non-empty part)")
    return [count / total for count in counts]

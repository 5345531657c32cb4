"""Splitting the training examples into federated silos.

- `random`: a seeded shuffle cut into near-equal parts (IID).
- `dirichlet`: label skew. Examples are grouped by a key (the class for classification; for NER the
  first entity type of the chunk, or O); each group is shared among silos by proportions drawn from
  Dirichlet(alpha) (small alpha: very skewed). Redrawn until every silo holds an example.
"""
from __future__ import annotations

import numpy as np

from fedbiobert.finetune.errors import InputError

SPLITS = ("random", "dirichlet")
MAX_SILOS = 32
_MAX_ATTEMPTS = 100


def split_silos(keys: list, n_clients: int, scheme: str, seed: int, alpha: float = 0.5) -> list[list[int]]:
    """n_clients disjoint, non-empty, sorted lists of example indices covering every example."""
    if len(keys) < n_clients:
        raise InputError(f"--n_clients {n_clients} exceeds the {len(keys)} training examples "
                         "(accepted: at most one silo per example)")
    if scheme == "random":
        order = np.random.default_rng(seed).permutation(len(keys))
        return [sorted(part.tolist()) for part in np.array_split(order, n_clients)]
    for attempt in range(_MAX_ATTEMPTS):
        parts = _dirichlet_attempt(keys, n_clients, seed + attempt, alpha)
        if all(parts):
            return parts
    raise InputError(f"--split dirichlet with --dirichlet_alpha {alpha} left a silo empty in {_MAX_ATTEMPTS} "
                     f"draws for {n_clients} silos (accepted: fewer silos or a larger alpha)")


def _dirichlet_attempt(keys: list, n_clients: int, seed: int, alpha: float) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    parts: list[list[int]] = [[] for _ in range(n_clients)]
    for key in sorted(set(keys), key=str):
        members = np.array([index for index, value in enumerate(keys) if value == key])
        members = members[rng.permutation(len(members))]
        cuts = np.floor(np.cumsum(rng.dirichlet(np.full(n_clients, alpha)))[:-1] * len(members)).astype(int)
        for client, chunk in enumerate(np.split(members, cuts)):
            parts[client].extend(chunk.tolist())
    return [sorted(part) for part in parts]

"""Attention statistics of the attention experiment: pure functions on probability arrays (no models).

Shapes: one document's attention is `[heads, queries, keys]` (all layers' heads stacked, layer-major),
every row a probability distribution over the document's keys. Entropies are in nats; Jensen-Shannon
divergences in bits (base 2), so they lie in [0, 1]: 0 for identical rows, 1 for disjoint ones.

- `row_entropy`: H(p) = -sum p log p of each row (0 log 0 = 0).
- `head_entropy`: each head's entropy, the mean over the document's queries (Clark et al. 2019, sec. 3).
- `js_divergence`: JS(p, q) = H((p + q) / 2) - (H(p) + H(q)) / 2, row by row.
- `head_js_matrix`: Clark et al.'s distance between heads i and j, the mean over queries of
  JS(attention of i, attention of j) on the same tokens: a `[heads, heads]` symmetric matrix, 0 diagonal.
- `same_head_js`: each head's mean JS between two models on the same tokens (how far it moved).
- `spearman`: Spearman's rank correlation, ties given their average rank.
"""
from __future__ import annotations

import numpy as np

LN2 = float(np.log(2.0))


def row_entropy(probabilities: np.ndarray) -> np.ndarray:
    """Entropy in nats over the last axis; zero probabilities add nothing (the limit of p log p)."""
    p = np.asarray(probabilities, dtype=np.float64)
    logs = np.log(np.where(p > 0, p, 1.0))
    return -(p * logs).sum(axis=-1)


def head_entropy(attention: np.ndarray) -> np.ndarray:
    """[heads]: the mean entropy of each head's attention rows over one document's queries."""
    return row_entropy(attention).mean(axis=-1)


def js_divergence(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Jensen-Shannon divergence in bits over the last axis (broadcasting); in [0, 1]."""
    p = np.asarray(p, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    value = row_entropy((p + q) / 2) - (row_entropy(p) + row_entropy(q)) / 2
    return np.clip(value / LN2, 0.0, 1.0)  # rounding can leave -1e-17 or 1 + 1e-16


def head_js_matrix(attention: np.ndarray) -> np.ndarray:
    """[heads, heads]: mean over queries of JS between every two heads' rows on one document.

    Computed through the entropies, one head against all at a time (memory heads x queries x keys,
    not heads^2 x queries x keys): JS(i, j) = H(m_ij) - (H_i + H_j) / 2 per query."""
    attention = np.asarray(attention, dtype=np.float64)
    entropies = row_entropy(attention)                              # [heads, queries]
    heads = attention.shape[0]
    matrix = np.zeros((heads, heads))
    for i in range(heads):
        mixed = row_entropy((attention[i][None] + attention) / 2)  # [heads, queries]
        per_query = mixed - (entropies[i][None] + entropies) / 2
        matrix[i] = per_query.mean(axis=-1) / LN2
    matrix = np.clip((matrix + matrix.T) / 2, 0.0, 1.0)  # exact symmetry; the terms differ by rounding only
    np.fill_diagonal(matrix, 0.0)
    return matrix


def same_head_js(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """[heads]: mean over queries of JS between head h of one model and head h of another, same tokens."""
    if first.shape != second.shape:
        raise ValueError(f"attention shapes differ: {first.shape} and {second.shape}")
    return js_divergence(first, second).mean(axis=-1)


def ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, tied values sharing their average rank."""
    values = np.asarray(values, dtype=np.float64).ravel()
    order = np.argsort(values, kind="mergesort")
    ranked = np.empty(len(values))
    ranked[order] = np.arange(1, len(values) + 1)
    for value in np.unique(values):
        tied = values == value
        if tied.sum() > 1:
            ranked[tied] = ranked[tied].mean()
    return ranked


def spearman(a, b) -> float:
    """Spearman's rho: Pearson's correlation of the ranks (nan when either side is constant)."""
    a, b = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    if a.shape != b.shape or len(a) < 2:
        raise ValueError(f"spearman needs two equal-length vectors of 2+ values (got {a.shape} and {b.shape})")
    ra, rb = ranks(a) - (len(a) + 1) / 2, ranks(b) - (len(b) + 1) / 2
    denominator = np.sqrt((ra * ra).sum() * (rb * rb).sum())
    return float("nan") if denominator == 0 else float((ra * rb).sum() / denominator)


def mean_abs_difference(first: np.ndarray, second: np.ndarray) -> float:
    """Mean |first - second| over the off-diagonal entries of two head-by-head matrices."""
    if first.shape != second.shape:
        raise ValueError(f"matrix shapes differ: {first.shape} and {second.shape}")
    off_diagonal = ~np.eye(first.shape[0], dtype=bool)
    return float(np.abs(first - second)[off_diagonal].mean())

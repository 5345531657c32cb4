"""Stable seeds derived from the run seed and a few labels (round, client, ...).

Python's `hash()` differs between processes, so seeds are derived with SHA-256: every process, and
a resumed run, derives the same seed for the same (round, client) without any shared RNG state.
"""
from __future__ import annotations

import hashlib

import torch


def derive_seed(base_seed: int, *labels) -> int:
    """A 63-bit seed that depends only on `base_seed` and `labels`."""
    text = "/".join(str(part) for part in (base_seed, *labels))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


def seed_torch(base_seed: int, *labels) -> None:
    """Seed torch's global RNG (dropout) for one unit of work."""
    torch.manual_seed(derive_seed(base_seed, *labels))

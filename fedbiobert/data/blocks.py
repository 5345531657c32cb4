"""The packed blocks of a corpus, read by row: only the rows a process asks for are read, and only
those it keeps (its own silos') stay in its memory.

A `BlockStore` is a row-wise concatenation of per-file 2-D integer arrays: the token cache's
int32 ``.npy`` files opened memory-mapped (nothing is read until a row is asked for), or arrays
already in memory. ``store[indices]`` is an int64 tensor of those rows, a fresh copy each time.

`keep_only(rows)` copies the given rows into this process's memory (int32) and drops the
memory maps: from then on the process holds exactly those rows, and asking for any other is an
error. A client process keeps the blocks of the silos it hosts, a server none (rank 0 the
validation sample it evaluates on); `held_rows` says which rows a process holds.
"""
from __future__ import annotations

import numpy as np
import torch


class BlockStore:
    """Rows [N, max_len] of token ids over per-file arrays; ``store[indices]`` -> int64 tensor."""

    dtype = torch.int64  # of the rows it returns (the arrays themselves may be int32)

    def __init__(self, parts: list[np.ndarray], width: int | None = None):
        if not parts and width is None:
            raise ValueError("a BlockStore without parts needs its width (accepted: width=max_len)")
        widths = {part.shape[1] for part in parts} | ({width} if width is not None else set())
        if len(widths) != 1 or any(part.ndim != 2 for part in parts):
            raise ValueError(f"block arrays of widths {sorted(widths)} (accepted: 2-D arrays of one width)")
        self._parts = list(parts)
        self._starts = np.cumsum([0] + [len(part) for part in parts])
        self._width = widths.pop()
        self._held: np.ndarray | None = None  # sorted rows kept by keep_only (None: every row, from the parts)
        self._rows: np.ndarray | None = None  # int32 [len(_held), width]: their contents

    @classmethod
    def from_array(cls, blocks: np.ndarray) -> BlockStore:
        """An in-memory store of one 2-D array (hand-built corpora)."""
        return cls([np.asarray(blocks)])

    def __len__(self) -> int:
        return int(self._starts[-1])

    @property
    def shape(self) -> tuple[int, int]:
        return len(self), self._width

    @property
    def held_rows(self) -> np.ndarray | None:
        """The rows this process keeps in memory (sorted), or None before keep_only (every row
        readable through the memory maps; only the pages of rows read become resident)."""
        return None if self._held is None else self._held.copy()

    @property
    def held_bytes(self) -> int:
        """Bytes of block contents this process keeps in its own memory (0 before keep_only)."""
        return 0 if self._rows is None else int(self._rows.nbytes)

    def __getitem__(self, index) -> torch.Tensor:
        """Rows at ``index`` (an int, a slice, a sequence/tensor of ints or a bool mask of N) as int64."""
        rows = self._row_indices(index)
        if self._held is None:
            out = self._read(rows)
        else:
            out = self._rows[self._positions(rows)].astype(np.int64)
        tensor = torch.from_numpy(out)
        return tensor[0] if isinstance(index, (int, np.integer)) else tensor

    def keep_only(self, rows) -> None:
        """Hold exactly ``rows`` (copied into this process's memory, int32) and drop the memory maps."""
        held = np.unique(self._row_indices(rows))
        if self._held is not None:
            self._positions(held)  # only rows still held can be kept
            self._rows, self._held = self._rows[np.searchsorted(self._held, held)], held
            return
        # Straight into int32, one file at a time, each map dropped once its rows are copied: the peak
        # is the kept rows plus the pages of one file's map, not an int64 copy of them.
        self._rows = self._read(held, np.int32, release=True)
        self._held = held
        self._parts = []  # no map stays open: this process reads no other row of the cache files

    def _row_indices(self, index) -> np.ndarray:
        if isinstance(index, slice):
            return np.arange(len(self))[index]
        rows = np.asarray(index.numpy() if isinstance(index, torch.Tensor) else index)
        if rows.dtype == np.bool_:
            if rows.shape != (len(self),):
                raise IndexError(f"a bool mask of shape {rows.shape} (accepted: one flag per block, {len(self)})")
            return rows.nonzero()[0]
        rows = rows.reshape(-1).astype(np.int64)
        if len(rows) and (rows.min() < -len(self) or rows.max() >= len(self)):
            bad = rows[(rows < -len(self)) | (rows >= len(self))][0]
            raise IndexError(f"block {bad} is out of range (accepted: 0 <= block < {len(self)})")
        return np.where(rows < 0, rows + len(self), rows)

    def _read(self, rows: np.ndarray, dtype=np.int64, release: bool = False) -> np.ndarray:
        out = np.empty((len(rows), self._width), dtype=dtype)
        part_of = np.searchsorted(self._starts, rows, side="right") - 1
        for part in range(len(self._parts)):
            here = part_of == part
            if here.any():
                out[here] = self._parts[part][rows[here] - self._starts[part]]  # a copy of just those rows
            if release:
                self._parts[part] = None  # the last reference to the map: it is unmapped now
        return out

    def _positions(self, rows: np.ndarray) -> np.ndarray:
        positions = np.minimum(np.searchsorted(self._held, rows), max(len(self._held) - 1, 0))
        missing = rows[self._held[positions] != rows] if len(self._held) else rows
        if len(missing):
            raise LookupError(
                f"block {missing[0]} is not held by this process: it holds {len(self._held)} blocks "
                "(a client process those of the silos it hosts, rank 0 also the validation sample)")
        return positions

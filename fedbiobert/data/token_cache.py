"""Tokenized, block-packed corpus and its on-disk cache.

Every document is tokenized once and packed into fixed-length blocks of ``max_len`` ids::

    [CLS] doc1 [SEP] doc2 ... [SEP]      (RoBERTa: <s> doc1 </s> doc2 ... </s>)

Each block starts with cls/bos and ends with sep/eos, holding ``max_len - 2`` content ids;
documents inside a block are separated by sep/eos and a long document continues in the
next block. Each (file, unit) group is packed on its own so a block never mixes files or
sidecar labels, which keeps the ``by_file`` and ``label`` partitions exact.

Validation is held out by **document**, before packing: ``held_out_documents`` picks about
``val_ratio`` of each file's documents (by a hash of their text, so the choice does not depend on
the seed, and duplicated documents land on the same side), and those are packed into blocks of
their own. A long document therefore never sits in both a training and a validation block. The last,
partial block of a group is padded with the pad id; it is dropped only when it holds
fewer than ``MIN_TAIL_CONTENT_TOKENS`` content ids and the group has other blocks (a
nearly-empty block wastes a forward pass and yields almost no MLM targets).

Each corpus file has two cache files under ``<cache_dir>/tokens/``: ``<key>.npy``, its blocks as a
raw int32 array, and ``<key>.pt``, the small per-block metadata (unit, held_out, number of
non-pad ids), written last so that it marks a complete entry. The key hashes the file and sidecar
content, the tokenizer fingerprint, ``max_len``, the label suffix and a format version, so any
change invalidates it. The ``.npy`` files are opened memory-mapped (see blocks.BlockStore): a
process reads only the rows it asks for, and keeps only those it is told to (its own silos').
"""
from __future__ import annotations

import hashlib
import json
import logging
import pickle
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer

from fedbiobert.atomic import atomic_write
from fedbiobert.data.blocks import BlockStore
from fedbiobert.data.corpus import Document, file_sha256, read_documents, sidecar_path
from fedbiobert.data.tokenizer import block_end_id, block_start_id, tokenizer_fingerprint

logger = logging.getLogger(__name__)

# Bump when the packing or file layout changes so stale caches are rebuilt.
# 2: validation documents packed apart (held_out); 3: blocks in a memory-mappable int32 .npy beside the .pt
TOKEN_CACHE_FORMAT_VERSION = 3
MIN_MAX_LEN = 8
MIN_TAIL_CONTENT_TOKENS = 16
_TOKENIZE_BATCH_DOCS = 1000


@dataclass
class TokenizedCorpus:
    """Packed blocks of a whole corpus, with the file and partition unit of each block.

    ``blocks`` reads rows as int64 tensors (``blocks[indices]``); everything else is small
    per-block metadata, which is all the partition and the validation sample need."""

    blocks: BlockStore  # [N, max_len] rows padded with pad_token_id (a tensor given here is wrapped)
    source: torch.Tensor  # int64 [N], index into `files`
    unit: list[str]  # per block: its sidecar label, else its file name
    files: list[str]  # file names, in corpus order
    pad_token_id: int
    held_out: torch.Tensor | None = None  # bool [N]: the block holds validation documents only
    lengths: torch.Tensor | None = None  # int64 [N]: non-pad ids per block (computed when not given)

    def __post_init__(self) -> None:
        if not isinstance(self.blocks, BlockStore):
            self.blocks = BlockStore.from_array(torch.as_tensor(self.blocks).numpy())
        if self.lengths is None:  # an in-memory corpus (tests): a cache gives the lengths from its metadata
            self.lengths = (self.blocks[:] != self.pad_token_id).sum(dim=1)

    def __len__(self) -> int:
        return len(self.blocks)

    def num_tokens(self, indices: torch.Tensor | None = None) -> int:
        """Number of non-pad ids in all blocks, or in the blocks at ``indices`` (from the
        metadata: no block is read)."""
        return int(self.lengths.sum() if indices is None else self.lengths[indices].sum())


@dataclass
class _PackedFile:
    blocks: np.ndarray  # [n, max_len]: int64 when just packed, the int32 memory map when read from the cache
    units: list[str]  # per block
    held_out: torch.Tensor  # bool [n]
    lengths: torch.Tensor  # int64 [n]: non-pad ids per block


def load_or_build_token_cache(
    files: list[Path],
    tokenizer,
    max_len: int,
    cache_dir: Path,
    label_suffix: str | None = ".specialty",
    val_ratio: float = 0.0,
) -> TokenizedCorpus:
    """Tokenize and pack every corpus file, reusing per-file caches where valid; about
    ``val_ratio`` of each file's documents are packed apart as validation blocks."""
    files = [Path(file) for file in files]
    _check_arguments(files, tokenizer, max_len)
    if not 0.0 <= val_ratio < 1.0:
        raise ValueError(f"val_ratio {val_ratio!r} is out of range (accepted: 0 <= val_ratio < 1)")
    tokens_dir = Path(cache_dir) / "tokens"
    tokenizer_id = tokenizer_fingerprint(tokenizer)
    started = time.perf_counter()
    packed_files = []
    for position, file in enumerate(files, start=1):
        cache_file = tokens_dir / f"{_cache_key(file, tokenizer_id, max_len, label_suffix, val_ratio)}.pt"
        packed = _load_cached(cache_file, max_len)
        if packed is None:
            _save_atomically(_pack_file(file, tokenizer, max_len, label_suffix, val_ratio), cache_file)
            # The process that tokenized (local rank 0) had to hold this file's blocks once; it drops
            # them and reopens the cache memory-mapped, like every other rank, so it keeps no more of
            # the corpus than they do.
            packed = _load_cached(cache_file, max_len)
            if packed is None:
                raise RuntimeError(f"token cache {cache_file} cannot be read back right after it was written")
        else:
            logger.info("reusing token cache %s", cache_file)
        _log_file_done(file, packed, position, len(files), started)
        packed_files.append(packed)
    corpus = _concatenate(packed_files, files, tokenizer.pad_token_id)
    logger.info(
        "token cache ready: %d files, %d blocks of %d, %d tokens in %.1fs",
        len(files), len(corpus), max_len, corpus.num_tokens(), time.perf_counter() - started,
    )
    return corpus


def _check_arguments(files: list[Path], tokenizer, max_len: int) -> None:
    if isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < MIN_MAX_LEN:
        raise ValueError(f"max_len {max_len!r} is too small (accepted: an int >= {MIN_MAX_LEN})")
    if not files:
        raise ValueError("files is empty (accepted: at least one corpus file)")
    if None in (tokenizer.pad_token_id, block_start_id(tokenizer), block_end_id(tokenizer)):
        raise ValueError(
            f"tokenizer {type(tokenizer).__name__} lacks a pad, cls/bos or sep/eos token "
            "(accepted: a tokenizer with all three)"
        )
    if len(tokenizer) > np.iinfo(np.int32).max:
        raise ValueError(f"tokenizer has {len(tokenizer)} tokens (accepted: fewer than 2**31, stored as int32)")


def _cache_key(file: Path, tokenizer_id: str, max_len: int, label_suffix: str | None, val_ratio: float) -> str:
    label_file = sidecar_path(file, label_suffix)
    identity = {
        "name": file.name,  # the name is stored as the unit of unlabelled blocks
        "file": file_sha256(file),
        "labels": file_sha256(label_file) if label_file else None,
        "tokenizer": tokenizer_id,
        "max_len": max_len,
        "label_suffix": label_suffix,
        "val_ratio": val_ratio,
        "format": TOKEN_CACHE_FORMAT_VERSION,
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode("utf-8")).hexdigest()[:32]


def _blocks_file(cache_file: Path) -> Path:
    return cache_file.with_suffix(".npy")


def _load_cached(cache_file: Path, max_len: int) -> _PackedFile | None:
    """The cached entry (its blocks memory-mapped, nothing read), or None when there is none or it
    is unusable."""
    if not cache_file.is_file():
        return None
    try:
        state = torch.load(cache_file, weights_only=True)
        units = [state["unit_names"][i] for i in state["unit_index"].tolist()]
        held_out, lengths = state["held_out"].bool(), state["lengths"].long()
        blocks = np.load(_blocks_file(cache_file), mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, RuntimeError, EOFError, KeyError, IndexError, pickle.UnpicklingError) as error:
        # A damaged cache file is only a lost speed-up: rebuild it rather than fail the run.
        logger.warning("ignoring unreadable token cache %s (%s); rebuilding it", cache_file, error)
        return None
    if (blocks.ndim != 2 or blocks.shape[1] != max_len or blocks.dtype != np.int32
            or not len(units) == len(held_out) == len(lengths) == blocks.shape[0]):
        logger.warning("ignoring token cache %s with unexpected shape %s (%s); rebuilding it", cache_file,
                       tuple(blocks.shape), blocks.dtype)
        return None
    return _PackedFile(blocks=blocks, units=units, held_out=held_out, lengths=lengths)


def held_out_documents(texts: list[str], val_ratio: float) -> set[int]:
    """Indices of the documents held out for validation: the ``num_held_out`` documents whose
    text hashes lowest. Deterministic, seed-independent, and equal texts share a side."""
    count = num_held_out(len(texts), val_ratio)
    ranked = sorted(range(len(texts)), key=lambda i: (hashlib.sha256(texts[i].encode("utf-8")).digest(), i))
    return set(ranked[:count])


def num_held_out(num_documents: int, val_ratio: float) -> int:
    """round(n * val_ratio) documents, at least one (if the file has two or more) and never all."""
    if num_documents < 2 or val_ratio == 0.0:
        return 0
    return min(num_documents - 1, max(1, round(num_documents * val_ratio)))


def _pack_file(file: Path, tokenizer, max_len: int, label_suffix: str | None, val_ratio: float) -> _PackedFile:
    documents = read_documents(file, label_suffix)
    logger.info("tokenizing %s: %d documents", file.name, len(documents))
    token_ids = _tokenize(documents, tokenizer)
    held_out = held_out_documents([document.text for document in documents], val_ratio)
    groups: dict[tuple[bool, str], list[list[int]]] = {}
    for index, (document, ids) in enumerate(zip(documents, token_ids)):
        if ids:
            groups.setdefault((index in held_out, document.label or file.name), []).append(ids)
    block_arrays, units, flags = [], [], []
    for (is_held_out, unit), docs in sorted(groups.items(), key=lambda item: item[0][0]):  # training first
        blocks = pack_documents(docs, block_start_id(tokenizer), block_end_id(tokenizer),
                                tokenizer.pad_token_id, max_len)
        block_arrays.append(blocks)
        units.extend([unit] * len(blocks))
        flags.extend([is_held_out] * len(blocks))
    stacked = np.concatenate(block_arrays) if block_arrays else np.zeros((0, max_len), dtype=np.int64)
    return _PackedFile(blocks=stacked, units=units, held_out=torch.tensor(flags, dtype=torch.bool),
                       lengths=torch.from_numpy((stacked != tokenizer.pad_token_id).sum(axis=1)))


def _tokenize(documents: list[Document], tokenizer) -> list[list[int]]:
    """Token ids of every document, without special tokens and without truncation."""
    # A private copy of the Rust backend, with padding/truncation off, is about a quarter
    # faster than the transformers wrapper (no offsets, no Python-side conversion) and
    # maps texts to exactly the same ids.
    backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    backend.no_padding()
    backend.no_truncation()
    token_ids: list[list[int]] = []
    for start in range(0, len(documents), _TOKENIZE_BATCH_DOCS):
        texts = [document.text for document in documents[start:start + _TOKENIZE_BATCH_DOCS]]
        encodings = backend.encode_batch_fast(texts, add_special_tokens=False)
        token_ids.extend(encoding.ids for encoding in encodings)
    return token_ids


def pack_documents(
    docs: list[list[int]], start_id: int, end_id: int, pad_id: int, max_len: int
) -> np.ndarray:
    """Pack token-id lists into int64 blocks ``[start] content [end] pad*`` of ``max_len``.

    Content is the documents joined by ``end_id``, cut every ``max_len - 2`` ids.
    """
    content_len = max_len - 2
    stream = np.fromiter(_joined(docs, end_id), dtype=np.int64)
    num_blocks = -(-len(stream) // content_len)
    tail_len = len(stream) - (num_blocks - 1) * content_len
    if num_blocks > 1 and tail_len < min(MIN_TAIL_CONTENT_TOKENS, content_len):
        num_blocks -= 1
        stream = stream[:num_blocks * content_len]
    blocks = np.full((num_blocks, max_len), pad_id, dtype=np.int64)
    blocks[:, 0] = start_id
    for row in range(num_blocks):
        chunk = stream[row * content_len:(row + 1) * content_len]
        blocks[row, 1:1 + len(chunk)] = chunk
        blocks[row, 1 + len(chunk)] = end_id
    return blocks


def _joined(docs: list[list[int]], separator: int):
    for position, ids in enumerate(docs):
        if position:
            yield separator
        yield from ids


def _save_atomically(packed: _PackedFile, cache_file: Path) -> None:
    """The blocks (int32: every vocabulary is below 2**31, see _check_arguments) into
    ``<key>.npy``, then the metadata into ``<key>.pt``, each written atomically: a reader sees a
    whole entry or none (the .pt comes last)."""
    unit_names = sorted(set(packed.units))
    unit_position = {name: index for index, name in enumerate(unit_names)}
    state = {
        "unit_names": unit_names,
        "unit_index": torch.tensor([unit_position[unit] for unit in packed.units], dtype=torch.int64),
        "held_out": packed.held_out,
        "lengths": packed.lengths,
    }
    # 0644 whatever the umask: the cache is meant to be shared between users
    with atomic_write(_blocks_file(cache_file), "wb", permissions=0o644, parents=True) as stream:
        np.save(stream, packed.blocks.astype(np.int32))
    with atomic_write(cache_file, "wb", permissions=0o644) as stream:
        torch.save(state, stream)


def _log_file_done(file: Path, packed: _PackedFile, position: int, total: int, started: float) -> None:
    logger.info(
        "tokens %d/%d %s: %d blocks, %d tokens (%.1fs elapsed)",
        position, total, file.name, len(packed.blocks), int(packed.lengths.sum()), time.perf_counter() - started,
    )


def _concatenate(packed_files: list[_PackedFile], files: list[Path], pad_id: int) -> TokenizedCorpus:
    block_counts = torch.tensor([len(packed.blocks) for packed in packed_files])
    return TokenizedCorpus(
        blocks=BlockStore([packed.blocks for packed in packed_files]),
        source=torch.repeat_interleave(torch.arange(len(packed_files)), block_counts),
        unit=[unit for packed in packed_files for unit in packed.units],
        files=[file.name for file in files],
        pad_token_id=int(pad_id),
        held_out=torch.cat([packed.held_out for packed in packed_files]),
        lengths=torch.cat([packed.lengths for packed in packed_files]),
    )

"""The audit's token sequences: the public text the curious server trains its decoder on, and the silo's
held-out text it attacks, as padded id tensors with the positions that are scored.

Public text: a .txt file, one document per line (the general-domain file), tokenized per document and cut
into windows of max_len - 2 word pieces between [CLS] and [SEP]. Silo text: the test sentences of NER
folders (token<TAB>tag), one sequence per sentence (cut at max_len), where every word piece of a word
inside a B-/I- span is an entity token; or .txt files, windowed like the public text (no entities).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fedbiobert.finetune.data_ner import read_conll, word_pieces


@dataclass
class Sequences:
    """N sequences of T positions. `scored`: real text tokens (not [CLS]/[SEP]/padding), the positions an
    attack is scored on; `entity`: scored positions inside a named entity; `source`: where each came from."""
    input_ids: torch.Tensor       # (N, T) long
    attention_mask: torch.Tensor  # (N, T) long
    scored: torch.Tensor          # (N, T) bool
    entity: torch.Tensor          # (N, T) bool
    source: list[str]

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def tokens(self) -> int:
        return int(self.scored.sum())


def _pack(rows: list[list[int]], entities: list[list[bool]], sources: list[str], tokenizer,
          max_len: int) -> Sequences:
    """[CLS] row [SEP], padded to max_len; rows hold at most max_len - 2 pieces."""
    count = len(rows)
    ids = torch.full((count, max_len), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros((count, max_len), dtype=torch.long)
    scored = torch.zeros((count, max_len), dtype=torch.bool)
    entity = torch.zeros((count, max_len), dtype=torch.bool)
    for index, (row, flags) in enumerate(zip(rows, entities)):
        length = len(row)
        ids[index, :length + 2] = torch.tensor([tokenizer.cls_token_id, *row, tokenizer.sep_token_id])
        mask[index, :length + 2] = 1
        scored[index, 1:length + 1] = True
        entity[index, 1:length + 1] = torch.tensor(flags, dtype=torch.bool)
    return Sequences(ids, mask, scored, entity, sources)


def _windows(path: Path, tokenizer, max_len: int) -> list[list[int]]:
    """Every whole window of max_len - 2 pieces of every document (a document's last, shorter, piece too
    when it holds at least a quarter window)."""
    width = max_len - 2
    documents = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    windows = []
    for ids in tokenizer(documents, add_special_tokens=False)["input_ids"]:
        windows += [ids[start:start + width] for start in range(0, len(ids), width)
                    if len(ids[start:start + width]) >= width // 4]
    return windows


def _sample(count: int, limit: int | None, seed: int) -> list[int]:
    """Indices of `limit` items of `count`, drawn without replacement by `seed`, in order."""
    if limit is None or limit >= count:
        return list(range(count))
    return sorted(np.random.default_rng(seed).choice(count, size=limit, replace=False).tolist())


def text_windows(paths: list[Path], tokenizer, max_len: int, limit: int | None, seed: int) -> Sequences:
    """Up to `limit` windows drawn from the .txt files `paths`."""
    rows, sources = [], []
    for path in paths:
        windows = _windows(path, tokenizer, max_len)
        rows += windows
        sources += [path.name] * len(windows)
    keep = _sample(len(rows), limit, seed)
    rows, sources = [rows[i] for i in keep], [sources[i] for i in keep]
    return _pack(rows, [[False] * len(row) for row in rows], sources, tokenizer, max_len)


def ner_sentences(folder: Path, tokenizer, max_len: int, limit: int | None, seed: int):
    """(rows, entity flags, sources) of up to `limit` test sentences of an NER folder."""
    sentences = [s for s in read_conll(folder / "test.tsv") if s.words]
    pieces = word_pieces(tokenizer, [word for sentence in sentences for word in sentence.words])
    rows, flags = [], []
    for index in _sample(len(sentences), limit, seed):
        row, flag = [], []
        for word, tag in zip(sentences[index].words, sentences[index].tags):
            row += pieces[word]
            flag += [tag != "O"] * len(pieces[word])
        rows.append(row[:max_len - 2])
        flags.append(flag[:max_len - 2])
    return rows, flags, [folder.name] * len(rows)


def silo_text(paths: list[Path], tokenizer, max_len: int, limit: int | None, seed: int) -> Sequences:
    """The attacked text: `limit` sequences shared evenly among `paths` (NER folders or .txt files)."""
    share = None if limit is None else max(1, limit // len(paths))
    rows, flags, sources = [], [], []
    for path in paths:
        if path.is_dir():
            got = ner_sentences(path, tokenizer, max_len, share, seed)
        else:
            windows = text_windows([path], tokenizer, max_len, share, seed)
            got = ([r[m].tolist() for r, m in zip(windows.input_ids, windows.scored)],
                   [[False] * int(m.sum()) for m in windows.scored], windows.source)
        rows, flags, sources = rows + got[0], flags + got[1], sources + got[2]
    return _pack(rows, flags, sources, tokenizer, max_len)


def check_text_path(path: Path, flag: str) -> None:
    """ValueError (one line) unless `path` is a .txt file or a folder with test.tsv."""
    if path.is_dir() and (path / "test.tsv").is_file():
        return
    if path.is_file() and path.suffix == ".txt":
        return
    raise ValueError(f"{flag} '{path}' is neither a .txt file (one document per line) nor an NER folder with "
                     "test.tsv (accepted: either)")

"""NER data: CoNLL/IOB2 folders, sub-token label alignment, splitting of long sentences.

A folder holds `train.tsv`, `devel.tsv` (or `dev.tsv`, optional) and `test.tsv`: one `token<TAB>tag`
per line, a blank line between sentences, tags `O`, `B-TYPE`, `I-TYPE`.

Encoding puts each word's label on its first sub-token and IGNORE_INDEX (-100) on the others (and on
special tokens). A sentence longer than `max_len` sub-tokens is split into chunks of whole words;
predictions are put back together per sentence before scoring, so every gold entity is scored exactly
once, whole.
Chunk boundaries depend on the words alone, never on the tags: choosing them from gold tags (say, to
avoid cutting an entity) would hand the model gold information at test time. The same rule serves
training, so training and test chunks look alike.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from fedbiobert.constants import IGNORE_INDEX
from fedbiobert.data.tokenizer import block_end_id, block_start_id
from fedbiobert.finetune.errors import InputError
from fedbiobert.finetune.splits import read_split_folder

logger = logging.getLogger(__name__)

SPLIT_FILES = {"train": ("train.tsv",), "dev": ("devel.tsv", "dev.tsv"), "test": ("test.tsv",)}
_TAG = re.compile(r"^(O|[BI]-\S+)$")
_ACCEPTED = "accepted: token<TAB>tag with tag O, B-TYPE or I-TYPE, a blank line between sentences"


@dataclass
class Sentence:
    words: list[str]
    tags: list[str]
    lines: list[int] = field(default_factory=list)  # 1-based line number of each word, for messages


@dataclass
class Chunk:
    """Up to max_len sub-tokens of one sentence: words [first_word, first_word + num_words)."""
    sentence: int
    first_word: int
    num_words: int
    input_ids: list[int]
    labels: list[int]


def read_conll(path: Path) -> list[Sentence]:
    """Every sentence of one CoNLL/IOB2 file; InputError naming file and line for a malformed line."""
    sentences, current = [], Sentence([], [])
    with open(path, encoding="utf-8") as stream:
        for number, raw in enumerate(stream, start=1):
            line = raw.rstrip("\r\n")
            if not line.strip():
                current = _close(sentences, current)
                continue
            word, tag = _parse_line(path, number, line)
            if word != "-DOCSTART-":
                current.words.append(word)
                current.tags.append(tag)
                current.lines.append(number)
    _close(sentences, current)
    return sentences


def _close(sentences: list[Sentence], current: Sentence) -> Sentence:
    if current.words:
        sentences.append(current)
    return Sentence([], [])


def _parse_line(path: Path, number: int, line: str) -> tuple[str, str]:
    fields = line.split("\t") if "\t" in line else line.split()
    if len(fields) < 2 or not fields[0].strip() or not _TAG.match(fields[-1].strip()):
        raise InputError(f"{path}:{number}: malformed IOB line {line[:80]!r} ({_ACCEPTED})")
    return fields[0].strip(), fields[-1].strip()


def read_ner_folder(folder: Path) -> dict[str, list[Sentence]]:
    """{'train', 'test'[, 'dev']}: sentences of each split; InputError for a missing or empty split."""
    return read_split_folder(folder, SPLIT_FILES, read_conll, "NER",
                             "a folder with train.tsv, test.tsv and optionally devel.tsv", "sentences")


def label_list(train: list[Sentence]) -> list[str]:
    """'O' then every B-/I- tag of the training split, in sorted order."""
    tags = {tag for sentence in train for tag in sentence.tags}
    return ["O"] + sorted(tags - {"O"})


def check_known_tags(sentences: list[Sentence], labels: list[str], path: Path, split: str) -> None:
    known = set(labels)
    for sentence in sentences:
        for tag, number in zip(sentence.tags, sentence.lines):
            if tag not in known:
                raise InputError(f"{path}:{number}: tag {tag!r} of the {split} split never occurs in the "
                                 f"training split (known tags: {' '.join(labels)})")


def word_pieces(tokenizer, words: list[str]) -> dict[str, list[int]]:
    """Sub-token ids of every distinct word, tokenized once in one batch ([UNK] if it has none).

    Byte-level BPE (RoBERTa) marks word starts with a space, so each word gets a leading space, as it
    has inside a sentence."""
    distinct = sorted(set(words))
    prefix = " " if _spaces_matter(tokenizer) else ""
    encoded = tokenizer([prefix + word for word in distinct], add_special_tokens=False)["input_ids"]
    unknown = [tokenizer.unk_token_id]
    return {word: ids or unknown for word, ids in zip(distinct, encoded)}


def _spaces_matter(tokenizer) -> bool:
    """True for tokenizers that encode a leading space (byte-level BPE), False for WordPiece."""
    plain, spaced = tokenizer(["a", " a"], add_special_tokens=False)["input_ids"]
    return plain != spaced


# Words after which a chunk preferably ends: sentence-internal punctuation seldom sits inside an entity.
_PUNCTUATION = re.compile(r"^[.,;:!?)\]]+$")


def split_points(piece_counts: list[int], words: list[str], budget: int) -> list[tuple[int, int]]:
    """(start, end) word ranges covering the sentence, each within `budget` sub-tokens (a single word
    longer than that gets a range of its own). From the words only: a range ends after the last
    punctuation word of its second half when there is one, else at the word that fills the budget."""
    ranges, start, total = [], 0, len(piece_counts)
    while start < total:
        end, used = start, 0
        while end < total and used + piece_counts[end] <= budget:
            used += piece_counts[end]
            end += 1
        end = max(end, start + 1)
        if end < total:
            middle = start + (end - start + 1) // 2
            end = next((b + 1 for b in range(end - 1, middle - 1, -1) if _PUNCTUATION.match(words[b])), end)
        ranges.append((start, end))
        start = end
    return ranges


def encode_ner(sentences: list[Sentence], tokenizer, labels: list[str], max_len: int) -> list[Chunk]:
    """Chunks of at most max_len ids ([CLS] ... [SEP]), label on each word's first sub-token."""
    label_to_id = {label: index for index, label in enumerate(labels)}
    pieces = word_pieces(tokenizer, [word for sentence in sentences for word in sentence.words])
    start_id, end_id = block_start_id(tokenizer), block_end_id(tokenizer)
    budget = max_len - 2
    chunks = []
    for index, sentence in enumerate(sentences):
        counts = [min(len(pieces[word]), budget) for word in sentence.words]
        for first, last in split_points(counts, sentence.words, budget):
            ids, target = [start_id], [IGNORE_INDEX]
            for word, tag in zip(sentence.words[first:last], sentence.tags[first:last]):
                word_ids = pieces[word][:budget]
                ids.extend(word_ids)
                target.extend([label_to_id.get(tag, 0)] + [IGNORE_INDEX] * (len(word_ids) - 1))
            chunks.append(Chunk(index, first, last - first, ids + [end_id], target + [IGNORE_INDEX]))
    num_split = len(chunks) - len(sentences)
    if num_split:
        logger.info("%d sentence chunk(s) added by splitting sentences longer than %d sub-tokens", num_split, max_len)
    return chunks


def merge_predictions(chunks: list[Chunk], predicted: list[list[int]], sentences: list[Sentence],
                      labels: list[str]) -> list[list[str]]:
    """Per-sentence predicted tags from per-chunk label ids (one per word, in word order)."""
    tags = [["O"] * len(sentence.words) for sentence in sentences]
    for chunk, ids in zip(chunks, predicted):
        if len(ids) != chunk.num_words:
            raise ValueError(f"chunk of sentence {chunk.sentence} has {chunk.num_words} words, {len(ids)} predictions")
        for offset, label_id in enumerate(ids):
            tags[chunk.sentence][chunk.first_word + offset] = labels[label_id]
    return tags

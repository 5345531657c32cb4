"""Classification data: CSV files with `label,text` columns.

A folder holds `train.csv`, `test.csv` and optionally `dev.csv`/`devel.csv`; a `labels.csv` whose
first two columns are a label value and its name names the classes. Texts are truncated to
`max_len` sub-tokens (the usual recipe for abstracts).
"""
from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path

from fedbiobert.finetune.errors import InputError
from fedbiobert.finetune.splits import read_split_folder

logger = logging.getLogger(__name__)

SPLIT_FILES = {"train": ("train.csv",), "dev": ("devel.csv", "dev.csv"), "test": ("test.csv",)}
REQUIRED_COLUMNS = ("label", "text")


@dataclass
class Document:
    label: str
    text: str
    line: int  # 1-based line of the record's start, for messages


@dataclass
class Encoded:
    input_ids: list[int]
    labels: int


def read_csv(path: Path) -> list[Document]:
    """Every row of a label,text CSV; InputError if the columns are missing."""
    csv.field_size_limit(1 << 28)
    with open(path, encoding="utf-8", newline="") as stream:
        reader = csv.DictReader(stream)
        columns = [name.strip() for name in reader.fieldnames or []]
        missing = [name for name in REQUIRED_COLUMNS if name not in columns]
        if missing:
            raise InputError(f"{path}:1: CSV header {','.join(columns) or '(empty)'} lacks column(s) "
                             f"{', '.join(missing)} (accepted: a header with label and text columns)")
        reader.fieldnames = columns
        documents = []
        for row in reader:
            documents.append(Document(str(row["label"]).strip(), row["text"] or "", reader.line_num))
    return documents


def read_classification_folder(folder: Path) -> dict:
    """{'train', 'test'[, 'dev'], '<split>_path', 'names'}; InputError for a missing or empty split."""
    splits = read_split_folder(folder, SPLIT_FILES, read_csv, "classification",
                               "a folder with train.csv and test.csv with label,text columns", "rows")
    splits["names"] = read_label_names(folder / "labels.csv")
    return splits


def read_label_names(path: Path) -> dict[str, str]:
    """label value -> class name from labels.csv (first two columns), or {} without the file."""
    if not path.is_file():
        return {}
    with open(path, encoding="utf-8", newline="") as stream:
        rows = list(csv.reader(stream))
    return {row[0].strip(): row[1].strip() for row in rows[1:] if len(row) >= 2}


def label_list(train: list[Document]) -> list[str]:
    """The training split's label values, numerically sorted when they are all integers."""
    values = {document.label for document in train}
    if all(value.lstrip("-").isdigit() for value in values):
        return sorted(values, key=int)
    return sorted(values)


def check_known_labels(documents: list[Document], labels: list[str], path: Path, split: str) -> None:
    known = set(labels)
    for document in documents:
        if document.label not in known:
            raise InputError(f"{path}:{document.line}: label {document.label!r} of the {split} split never "
                             f"occurs in the training split (known labels: {' '.join(labels)})")


def encode_classification(documents: list[Document], tokenizer, labels: list[str], max_len: int) -> list[Encoded]:
    label_to_id = {label: index for index, label in enumerate(labels)}
    encoded = tokenizer([document.text for document in documents], truncation=True, max_length=max_len)
    return [Encoded(ids, label_to_id.get(document.label, 0))
            for ids, document in zip(encoded["input_ids"], documents)]

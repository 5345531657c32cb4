"""A downstream dataset folder's train/dev/test split files, found and read the same way for every
task: only the file names and the reader of one file differ (NER: CoNLL .tsv, classification: .csv)."""
from __future__ import annotations

from pathlib import Path

from fedbiobert.finetune.errors import InputError


def read_split_folder(folder, split_files: dict, read, kind: str, accepted: str, unit: str) -> dict:
    """{'train', 'test'[, 'dev'], '<split>_path'}: each split read with `read` from the first of its
    file names found in `folder`; InputError for a missing train/test split or an empty split.
    (Shared by the NER and classification readers: only the file names and the reader differ.)"""
    folder = Path(folder)
    splits: dict = {}
    for split, names in split_files.items():
        path = next((folder / name for name in names if (folder / name).is_file()), None)
        if path is None:
            if split == "dev":
                continue
            raise InputError(f"{kind} folder '{folder}' has no {names[0]} (accepted: {accepted})")
        splits[split] = read(path)
        if not splits[split]:
            raise InputError(f"{path}: the {split} split is empty (no {unit})")
        splits[split + "_path"] = path
    return splits

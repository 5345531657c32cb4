"""Shared fixtures: paths to the real shared data, and small corpora sliced from it."""
from __future__ import annotations

import itertools
import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("FEDBIOBERT_SHARED_DATA", REPO.parent / "shared" / "data"))
PRETRAIN = SHARED_DATA / "pretrain"
SCIVOCAB = SHARED_DATA / "vocab" / "scivocab_uncased.txt"


def copy_head(name: str, dest: Path, num_lines: int) -> Path:
    """Copy the first `num_lines` raw lines of a real pretrain file to `dest` (a tmp path)."""
    with open(PRETRAIN / name, encoding="utf-8", newline="") as handle:
        lines = list(itertools.islice(handle, num_lines))
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text("".join(lines), encoding="utf-8", newline="")
    return dest


def slice_corpus(target: Path, lines_per_file: dict[str, int]) -> Path:
    """Copy the first N lines of real shared files into `target` (a tmp dir, never the repo)."""
    target.mkdir(parents=True, exist_ok=True)
    for name, count in lines_per_file.items():
        source = PRETRAIN / name
        with source.open(encoding="utf-8") as stream:
            lines = [next(stream) for _ in range(count)]
        (target / name).write_text("".join(lines), encoding="utf-8")
        sidecar = source.with_suffix(".specialty")
        if sidecar.exists():
            with sidecar.open(encoding="utf-8") as stream:
                (target / sidecar.name).write_text("".join(next(stream) for _ in range(count)), encoding="utf-8")
    return target


SMALL_CORPUS = {"pubmed_genia_abstracts.txt": 120, "pubmed_hoc_abstracts.txt": 120,
                "clinical_mtsamples_notes.txt": 60, "pubmedqa_contexts.txt": 80}


@pytest.fixture(scope="session")
def small_corpus(tmp_path_factory) -> Path:
    return slice_corpus(tmp_path_factory.mktemp("corpus"), SMALL_CORPUS)


@pytest.fixture(scope="session")
def python() -> str:
    return sys.executable

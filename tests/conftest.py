"""Shared fixtures: paths to the real shared data, and small corpora sliced from it.

Layout: tests/unit (one process, no data: runs without ../shared), tests/integration (one process,
real shared data), tests/processes (several real processes: torch.distributed, torchrun, launchers),
tests/support (helpers shared by tests; no tests).

Every test reaches the shared data through `shared_data()` (PRETRAIN and SCIVOCAB are made with it).
The data lives outside the repository, at ../shared/data from its root, or where
FEDBIOBERT_SHARED_DATA points; without it a session that selects tests outside tests/unit stops at
once with one message saying so.
"""
from __future__ import annotations

import itertools
import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA_VARIABLE = "FEDBIOBERT_SHARED_DATA"
SHARED_DATA = Path(os.environ.get(SHARED_DATA_VARIABLE) or REPO.parent / "shared" / "data")


def shared_data(relative: str) -> Path:
    """A path inside the shared data folder: the one way tests reach it."""
    return SHARED_DATA / relative


PRETRAIN = shared_data("pretrain")
SCIVOCAB = shared_data("vocab/scivocab_uncased.txt")
NEEDED = (PRETRAIN, SCIVOCAB)


def missing_shared_data_message() -> str | None:
    missing = [path for path in NEEDED if not path.exists()]
    if not missing:
        return None
    return (f"the tests need the shared data folder, looked for at '{SHARED_DATA}' ({', '.join(map(str, missing))} "
            f"missing); set {SHARED_DATA_VARIABLE}=/path/to/shared/data to use another place "
            "(README.md, 'Data sources', says what it holds)")


UNIT_TESTS = Path(__file__).resolve().parent / "unit"


def pytest_collection_modifyitems(config, items):
    """tests/unit needs no data; any other selected test stops the session at once, with one message,
    when the shared data is missing (not one FileNotFoundError per test)."""
    needs_data = any(UNIT_TESTS not in Path(str(item.fspath)).parents for item in items)
    message = missing_shared_data_message() if needs_data else None
    if message:
        raise pytest.UsageError(message)


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

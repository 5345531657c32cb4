"""fedbiobert/atomic.py, the one way the package writes files: a failure mid-write leaves the old file
intact and no temp file behind, new content appears whole with a plain file's mode, a missing folder
is a clear error, and folders are swapped in whole."""
from __future__ import annotations

import json
import os
import stat

import pytest

from fedbiobert.atomic import (atomic_directory, atomic_write, link_atomically, write_json_atomically,
                               write_text_atomically)


class Interrupted(Exception):
    pass


def names(folder):
    return sorted(path.name for path in folder.iterdir())


def mode(path):
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def umask_022():
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def test_new_content_appears_whole_with_a_plain_files_mode(tmp_path, umask_022):
    path = tmp_path / "results.md"
    path.write_text("old", encoding="utf-8")
    with atomic_write(path) as stream:
        stream.write("new ")
        assert path.read_text(encoding="utf-8") == "old"  # nothing shows until the block ends
        stream.write("content é")
    assert path.read_text(encoding="utf-8") == "new content é"
    assert mode(path) == 0o644  # not mkstemp's private 0600
    assert names(tmp_path) == ["results.md"]


def test_a_failure_mid_write_leaves_the_old_file_and_no_temp_file(tmp_path):
    path = tmp_path / "state.pt"
    path.write_bytes(b"previous round")
    with pytest.raises(Interrupted):
        with atomic_write(path, "wb", durable=True) as stream:
            stream.write(b"half of the next")
            stream.flush()
            raise Interrupted
    assert path.read_bytes() == b"previous round"
    assert names(tmp_path) == ["state.pt"]


def test_a_failure_before_any_file_existed_leaves_nothing(tmp_path):
    with pytest.raises(Interrupted):
        with atomic_write(tmp_path / "summary.json") as stream:
            stream.write("{")
            raise Interrupted
    assert names(tmp_path) == []


def test_a_missing_folder_is_a_clear_error_unless_asked_to_create_it(tmp_path):
    path = tmp_path / "no" / "such" / "results.json"
    with pytest.raises(FileNotFoundError, match=f"cannot write '{path}': its folder '{path.parent}' does not exist"):
        write_json_atomically(path, {"f1": 0.5})
    assert names(tmp_path) == []
    write_json_atomically(path, {"f1": 0.5}, parents=True)
    assert json.loads(path.read_text(encoding="utf-8")) == {"f1": 0.5}


def test_json_is_indented_by_two_with_the_callers_key_order_and_ending(tmp_path):
    write_json_atomically(tmp_path / "a.json", {"b": 1, "a": [1.5]})
    assert (tmp_path / "a.json").read_text(encoding="utf-8") == '{\n  "b": 1,\n  "a": [\n    1.5\n  ]\n}\n'
    write_json_atomically(tmp_path / "config.json", {"b": 1, "a": None}, sort_keys=True, end="")
    assert (tmp_path / "config.json").read_text(encoding="utf-8") == '{\n  "a": null,\n  "b": 1\n}'


def test_explicit_permissions_win_over_the_umask(tmp_path):
    previous = os.umask(0o077)
    try:
        write_text_atomically(tmp_path / "shared", "x", permissions=0o644)
        write_text_atomically(tmp_path / "private", "x")
    finally:
        os.umask(previous)
    assert (mode(tmp_path / "shared"), mode(tmp_path / "private")) == (0o644, 0o600)


def test_only_write_modes_are_accepted(tmp_path):
    with pytest.raises(ValueError, match="accepted: 'w' or 'wb'"):
        with atomic_write(tmp_path / "x", "a"):
            pass


def test_a_folder_is_swapped_in_whole_and_the_old_one_deleted_last(tmp_path, umask_022):
    target = tmp_path / "round2"
    target.mkdir()
    (target / "marker").write_text("old")
    with atomic_directory(target, durable=True) as staging:
        (staging / "config.json").write_text("{}")
        assert (target / "marker").exists()  # the old folder stays complete while the new one fills
    assert names(target) == ["config.json"] and mode(target) == 0o755
    assert names(tmp_path) == ["round2"]


def test_a_failed_folder_leaves_the_old_one_and_no_staging(tmp_path):
    target = tmp_path / "round1"
    target.mkdir()
    (target / "model.safetensors").write_bytes(b"weights")
    with pytest.raises(Interrupted):
        with atomic_directory(target) as staging:
            (staging / "model.safetensors").write_bytes(b"half")
            raise Interrupted
    assert (target / "model.safetensors").read_bytes() == b"weights"
    assert names(tmp_path) == ["round1"]


def test_without_replace_a_folder_already_there_wins(tmp_path):
    target = tmp_path / "tokenizer"
    with atomic_directory(target, replace=False, permissions=0o755) as staging:
        (staging / "vocab.txt").write_text("first")
    with pytest.raises(OSError):
        with atomic_directory(target, replace=False) as staging:
            (staging / "vocab.txt").write_text("second")
    assert (target / "vocab.txt").read_text() == "first"
    assert names(tmp_path) == ["tokenizer"] and mode(target) == 0o755


def test_a_link_replaces_the_old_file_with_the_same_bytes(tmp_path):
    (tmp_path / "round1.pt").write_bytes(b"one")
    (tmp_path / "round2.pt").write_bytes(b"two")
    link_atomically(tmp_path / "round1.pt", tmp_path / "state.pt")
    link_atomically(tmp_path / "round2.pt", tmp_path / "state.pt")
    assert os.path.samefile(tmp_path / "state.pt", tmp_path / "round2.pt")
    assert names(tmp_path) == ["round1.pt", "round2.pt", "state.pt"]

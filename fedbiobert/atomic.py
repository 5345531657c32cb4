"""Atomic writes: every file and folder the package writes appears whole or not at all.

One idiom, used by every writer: write a temp file (or fill a temp folder) beside the target, then
rename it into place (os.replace is atomic on POSIX within one file system, which "beside" guarantees).
A crash or an error mid-write leaves the previous file untouched and no temp file behind (a killed
process can leave one: its name starts with a dot and ends with `.tmp`, so it is never mistaken for
a result). `durable=True` adds the fsyncs that make the new content survive a power loss, where losing
it would cost training (checkpoints and round exports).
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


def default_mode(folder: bool = False) -> int:
    """The mode a plain open() (0666) or mkdir() (0777) would give, less the umask: mkstemp and mkdtemp
    create private (0600/0700) entries, and a result should read like any other file."""
    umask = os.umask(0)  # the only way to read the umask; set straight back
    os.umask(umask)
    return (0o777 if folder else 0o666) & ~umask


def fsync_dir(path: Path) -> None:
    """Make a rename in `path` durable (POSIX: the directory entry lives in the directory's own data)."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _beside(path: str | Path, parents: bool) -> Path:
    """`path` as a Path whose folder exists (created with parents=True), so that the temp file made
    beside it can be renamed onto it."""
    path = Path(path)
    if parents:
        path.parent.mkdir(parents=True, exist_ok=True)
    elif not path.parent.is_dir():
        raise FileNotFoundError(f"cannot write '{path}': its folder '{path.parent}' does not exist")
    return path


@contextmanager
def atomic_write(path: str | Path, mode: str = "w", *, encoding: str = "utf-8", permissions: int | None = None,
                 durable: bool = False, parents: bool = False) -> Iterator[IO]:
    """Yield an open temp file beside `path` (mode "w": text in `encoding`, "wb": bytes); when the block
    ends without an error it replaces `path` whole, and on an error it is deleted, `path` untouched.

    permissions: the file's mode (default: a plain open()'s). durable: fsync the file before the rename
    and its folder after. parents: create missing folders (else a missing folder is a FileNotFoundError
    naming it)."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write mode '{mode}' (accepted: 'w' or 'wb')")
    path = _beside(path, parents)
    descriptor, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    temporary = Path(name)
    try:
        with os.fdopen(descriptor, mode, encoding=None if mode == "wb" else encoding) as stream:
            os.fchmod(stream.fileno(), default_mode() if permissions is None else permissions)
            yield stream
            if durable:
                stream.flush()
                os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    if durable:
        fsync_dir(path.parent)


def write_text_atomically(path: str | Path, text: str, **options) -> None:
    """`text` as the whole of `path` (UTF-8); options as for atomic_write."""
    with atomic_write(path, "w", **options) as stream:
        stream.write(text)


def write_json_atomically(path: str | Path, value: Any, *, sort_keys: bool = False, end: str = "\n",
                          **options) -> None:
    """`value` as JSON indented by 2, followed by `end` (every JSON file of the package has that form;
    summary.json and config.json end without a newline, as they always have)."""
    write_text_atomically(path, json.dumps(value, indent=2, sort_keys=sort_keys) + end, **options)


@contextmanager
def atomic_directory(path: str | Path, *, replace: bool = True, permissions: int | None = None,
                     durable: bool = False, parents: bool = False) -> Iterator[Path]:
    """Yield an empty temp folder beside `path` to fill; when the block ends without an error it becomes
    `path`, and on an error it is deleted, `path` untouched.

    replace=True: an existing `path` is renamed aside (`<name>.old<pid>`) first and deleted only once the
    new folder is in place, so a crash at any point leaves a complete folder at `path` or under its old
    name, never neither. replace=False: an existing non-empty `path` is kept and the rename raises
    OSError (between processes writing the same content, the first one wins).
    permissions: the folder's mode (default: a plain mkdir()'s). durable: fsync the folder's files and
    the folder before the rename, and its parent after. parents: as for atomic_write."""
    path = _beside(path, parents)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield staging
        staging.chmod(default_mode(folder=True) if permissions is None else permissions)
        if durable:
            _fsync_files(staging)
        aside = _set_aside(path) if replace else None
        os.replace(staging, path)  # onto an existing non-empty folder (replace=False): OSError on POSIX
        if durable:
            fsync_dir(path.parent)
        if aside is not None:
            shutil.rmtree(aside, ignore_errors=True)  # last: until the swap it was the complete folder
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # gone already after a successful rename


def _set_aside(path: Path) -> Path | None:
    """Rename an existing folder `path` to `<name>.old<pid>` beside it; that name, or None if none."""
    if not path.exists():
        return None
    aside = path.with_name(path.name + f".old{os.getpid()}")
    os.replace(path, aside)
    return aside


def _fsync_files(folder: Path) -> None:
    for path in folder.iterdir():
        if path.is_file():
            with open(path, "rb") as stream:
                os.fsync(stream.fileno())
    fsync_dir(folder)


def link_atomically(source: Path, path: Path) -> None:
    """Make `path` a hard link to `source` (a copy where the file system has no links), replacing any
    old `path` atomically and durably. Not a write through atomic_write: a link has no content to
    write, and a link to the temp file would not survive its rename."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.unlink(missing_ok=True)  # left by a killed process with the same pid
    try:
        try:
            os.link(source, temporary)
        except OSError:
            shutil.copyfile(source, temporary)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)

"""Raw corpus access: finding the text files of a corpus, reading their documents (with
optional line-aligned sidecar labels) and fingerprinting them for cache keys.

A corpus is a single ``.txt``/``.jsonl`` file or a folder searched recursively for them.
``.txt`` holds one document per line; ``.jsonl`` one JSON object per line with a ``"text"``
field. A sidecar such as ``notes.specialty`` next to ``notes.txt`` gives one label per raw
line of the text file (e.g. the medical specialty of each clinical note).
"""
from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

TEXT_SUFFIXES = (".txt", ".jsonl")
ACCEPTED_DATA_DIR = "accepted: a .txt/.jsonl file or a folder of them"
_EMPTY_CHECK_CHUNK_BYTES = 1 << 16


@dataclass
class Document:
    """One document of a corpus file and its sidecar label (None when there is none)."""

    text: str
    label: str | None


def list_corpus_files(data_dir: str | Path) -> list[Path]:
    """Return the corpus files under ``data_dir`` (a text file or a folder), sorted."""
    path = Path(data_dir)
    if not path.exists():
        raise ValueError(f"data_dir '{path}' does not exist ({ACCEPTED_DATA_DIR})")
    if path.is_file():
        if not _is_text_file(path):
            raise ValueError(f"data_dir '{path}' is not a .txt or .jsonl file ({ACCEPTED_DATA_DIR})")
        files = [path]
    elif path.is_dir():
        files = _find_text_files(path)
        if not files:
            raise ValueError(f"data_dir '{path}' contains no .txt or .jsonl files ({ACCEPTED_DATA_DIR})")
    else:
        raise ValueError(f"data_dir '{path}' is neither a file nor a folder ({ACCEPTED_DATA_DIR})")
    if all(_is_blank_file(file) for file in files):
        raise ValueError(
            f"data_dir '{path}': every corpus file is empty ({ACCEPTED_DATA_DIR} with some text)"
        )
    logger.info("corpus %s: %d file(s)", path, len(files))
    return files


def _is_text_file(path: Path) -> bool:
    return path.suffix.lower() in TEXT_SUFFIXES


def _find_text_files(folder: Path) -> list[Path]:
    found = []
    for root, dir_names, file_names in os.walk(folder):
        # Pruning in place stops os.walk from descending into hidden folders (.git, .cache, ...).
        dir_names[:] = [name for name in dir_names if not name.startswith(".")]
        for name in file_names:
            candidate = Path(root) / name
            if not name.startswith(".") and _is_text_file(candidate) and candidate.is_file():
                found.append(candidate)
    return sorted(found)


def _is_blank_file(path: Path) -> bool:
    """True when the file holds nothing but whitespace (reads only until the first text)."""
    try:
        with open(path, "rb") as handle:
            while chunk := handle.read(_EMPTY_CHECK_CHUNK_BYTES):
                if chunk.strip():
                    return False
    except OSError as error:
        raise ValueError(f"corpus file '{path}' cannot be read ({error.strerror or error}) "
                         "(accepted: a readable UTF-8 text file)") from None
    return True


def check_corpus_files(files: list[Path], label_suffix: str | None = ".specialty") -> None:
    """Fail now, with the message tokenizing would give later, on a corpus file that is binary, not
    UTF-8, has a bad ``.jsonl`` line or a sidecar of the wrong length. Streams each file line by
    line (about 0.1 s for the 28 MB shared corpus), so memory stays small."""
    for path in map(Path, files):
        try:
            num_lines = _check_lines(path)
        except OSError as error:
            raise ValueError(f"corpus file '{path}' cannot be read ({error.strerror or error}) "
                             "(accepted: a readable UTF-8 text file)") from None
        _read_sidecar_labels(path, label_suffix, num_lines)


def _check_lines(path: Path) -> int:
    """Decode (and for .jsonl parse) every raw line as read_documents would; the number of lines."""
    is_jsonl = path.suffix.lower() == ".jsonl"
    offset = line_number = 0
    with open(path, "rb") as handle:
        for line_number, raw in enumerate(handle, start=1):
            line = _decode(raw, path, offset, line_number)
            if is_jsonl and line.strip():
                _parse_jsonl_line(line.removesuffix("\n").removesuffix("\r"), path, line_number)
            offset += len(raw)
    return line_number


def _decode(data: bytes, path: Path, offset: int = 0, first_line: int = 1) -> str:
    """UTF-8 text of ``data`` (found at byte ``offset``, line ``first_line`` of ``path``), or a
    ValueError naming the file, byte offset and line of a NUL byte or an invalid sequence."""
    nul_offset = data.find(b"\x00")
    if nul_offset >= 0:
        line_number = first_line + data.count(b"\n", 0, nul_offset)
        raise ValueError(
            f"corpus file '{path}' looks binary: NUL byte at offset {offset + nul_offset} (line {line_number}) "
            "(accepted: UTF-8 text)"
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line_number = first_line + data.count(b"\n", 0, error.start)
        raise ValueError(
            f"corpus file '{path}' is not valid UTF-8: byte offset {offset + error.start} (line {line_number}) "
            "(accepted: UTF-8 text)"
        ) from None


def read_documents(path: Path, label_suffix: str | None = ".specialty") -> list[Document]:
    """Read the non-blank documents of one corpus file, with sidecar labels if present."""
    path = Path(path)
    if not _is_text_file(path):
        raise ValueError(
            f"corpus file '{path}' has suffix '{path.suffix}' (accepted: {', '.join(TEXT_SUFFIXES)})"
        )
    raw_lines = read_raw_lines(path)
    labels = _read_sidecar_labels(path, label_suffix, len(raw_lines))
    parse_line = _parse_jsonl_line if path.suffix.lower() == ".jsonl" else _parse_txt_line
    documents = []
    for line_number, line in enumerate(raw_lines, start=1):
        if not line.strip():
            continue
        text = parse_line(line, path, line_number)
        if text:
            documents.append(Document(text=text, label=labels[line_number - 1] if labels else None))
    return documents


def read_raw_lines(path: Path) -> list[str]:
    """Split a UTF-8 text file into raw lines on '\\n' only.

    ``str.splitlines`` is avoided on purpose: it also splits on characters such as U+2028
    or form feed that occur inside real documents, which would break the line alignment
    with a sidecar label file (and differ from ``wc -l``).
    """
    text = _decode(Path(path).read_bytes(), path)
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the final newline terminates the last line; it does not start a new one
    return [line.removesuffix("\r") for line in lines]


def _parse_txt_line(line: str, path: Path, line_number: int) -> str:
    return line.strip()


def _parse_jsonl_line(line: str, path: Path, line_number: int) -> str:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        raise ValueError(
            f"corpus file '{path}' line {line_number} is not valid JSON ({error.msg}) "
            "(accepted: one JSON object per line with a string \"text\" field)"
        ) from None
    text = record.get("text") if isinstance(record, dict) else None
    if not isinstance(text, str):
        raise ValueError(
            f"corpus file '{path}' line {line_number} has no string \"text\" field "
            "(accepted: one JSON object per line with a string \"text\" field)"
        )
    return text.strip()


def sidecar_path(path: Path, label_suffix: str | None) -> Path | None:
    """The sidecar label file of a corpus file, or None when there is none."""
    if not label_suffix:
        return None
    candidate = Path(path).with_suffix(label_suffix)
    return candidate if candidate.is_file() else None


def _read_sidecar_labels(path: Path, label_suffix: str | None, num_lines: int) -> list[str | None] | None:
    label_file = sidecar_path(path, label_suffix)
    if label_file is None:
        return None
    labels = read_raw_lines(label_file)
    if len(labels) != num_lines:
        raise ValueError(
            f"sidecar '{label_file}' has {len(labels)} lines but '{path}' has {num_lines} "
            "(accepted: exactly one label per line of the text file)"
        )
    # A blank label means "unknown": the document then falls back to its file as unit.
    return [label.strip() or None for label in labels]


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file's content. A process hashes each corpus file for the token cache's key and
    again for a checkpoint's fingerprints (and for a resume's check): remembered per (path, size, mtime),
    so a corpus of gigabytes is read once per process, and an edited file is hashed afresh."""
    stat = os.stat(path)
    return _sha256_of(os.path.realpath(path), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=1024)
def _sha256_of(real_path: str, size: int, mtime_ns: int) -> str:
    with open(real_path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def corpus_fingerprint(files: list[Path]) -> str:
    """Hex sha256 over (name, size, content sha256) of every file, in the order given."""
    digest = hashlib.sha256()
    for file in files:
        file = Path(file)
        entry = f"{file.name}\0{file.stat().st_size}\0{file_sha256(file)}\n"
        digest.update(entry.encode("utf-8"))
    return digest.hexdigest()

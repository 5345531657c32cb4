"""Checks of the files a run reads and writes (data, tokenizer, checkpoints, output and cache
folders), run before any process group forms so a bad path or file fails with one line."""
from __future__ import annotations

import logging
import os
from pathlib import Path

from fedbiobert.config.options import Config, ConfigError, _require

logger = logging.getLogger(__name__)


def validate_paths(config: Config) -> None:
    """Checks of the files the run reads and writes (data, tokenizer, checkpoints, output and cache dirs),
    including the content of every corpus file, so a bad file fails here and not while tokenizing."""
    from fedbiobert.data import check_corpus_files, check_tokenizer
    files = corpus_files_for(config, notify=True)
    try:
        check_corpus_files(files, config.label_suffix)
    except ValueError as error:
        raise ConfigError(f"--data_dir: {error}") from None
    _validate_writable_dir("--output_dir", config.output_dir)
    if config.cache_dir is not None:
        _validate_writable_dir("--cache_dir", config.cache_dir)
    if config.tokenizer is not None:
        try:
            check_tokenizer(config.tokenizer)
        except ValueError as error:
            raise ConfigError(f"--tokenizer: {error}") from None
    if config.init_from is not None:
        from fedbiobert.config.warm_start import validate_init_from
        validate_init_from(config)
    _validate_resume_paths(config)


def corpus_files_for(config: Config, notify: bool = False) -> list[Path]:
    """The corpus files a run reads: those of --data_dir, narrowed by --data's words, then the first
    --tot_files of them. With `notify`, says what --data and --tot_files selected (once per run)."""
    from fedbiobert.data import list_corpus_files
    try:
        files = list_corpus_files(config.data_dir)
    except ValueError as error:
        raise ConfigError(f"--data_dir: {error}") from None
    if config.data is not None:
        files = _files_named(files, config, notify)
    if config.tot_files is not None:
        if notify and config.tot_files > len(files):
            logger.warning("--tot_files %d but %d corpus file(s) were found: using all %d", config.tot_files,
                           len(files), len(files))
        files = files[:config.tot_files]
    return files


def _files_named(files: list[Path], config: Config, notify: bool) -> list[Path]:
    """--data A-B: the files whose names contain A or B; each word must name at least one file."""
    words = [word for word in config.data.lower().split("-") if word]
    _require(bool(words), f"--data '{config.data}' names no corpus (accepted: words joined by '-', e.g. "
             "wikitext-pubmed, each part of a file name in --data_dir)")
    for word in words:
        _require(any(word in file.name.lower() for file in files),
                 f"--data '{config.data}': no file of --data_dir '{config.data_dir}' has '{word}' in its name "
                 f"(files there: {', '.join(file.name for file in files)})")
    chosen = [file for file in files if any(word in file.name.lower() for word in words)]
    if notify:
        logger.warning("--data %s: %d of the %d files of %s (%s); the original's corpus of that name is not "
                       "shipped, these files stand for it", config.data, len(chosen), len(files), config.data_dir,
                       ", ".join(file.name for file in chosen))
    return chosen


def _validate_writable_dir(flag: str, value: str) -> None:
    """A folder the run may create or write into: not a file, under a writable folder."""
    path = Path(value)
    _require(not path.exists() or path.is_dir(), f"{flag} '{value}' exists and is not a directory")
    existing = next(folder for folder in (path.absolute(), *path.absolute().parents) if folder.exists())
    _require(existing.is_dir(), f"{flag} '{value}' cannot be created: '{existing}' is a file, not a directory")
    _require(os.access(existing, os.W_OK | os.X_OK), f"{flag} '{value}' cannot be written: '{existing}' "
             "is not writable (accepted: a folder you can write to)")


def _validate_resume_paths(config: Config) -> None:
    from fedbiobert.checkpoint import has_checkpoint, resume_state_path
    if config.from_checkpoint or config.from_checkpoint_round is not None:
        path = resume_state_path(config.output_dir, config.from_checkpoint_round)
        _require(path.is_file(), f"cannot resume: '{path}' does not exist (train first, or drop "
                 "--from_checkpoint / --from_checkpoint_round)")
    else:
        _require(not has_checkpoint(config.output_dir),
                 f"--output_dir '{config.output_dir}' already holds a trained run; resume it with "
                 "--from_checkpoint True or choose another --output_dir")

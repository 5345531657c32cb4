"""Every option of a run: its flag, default, meaning and validation, one concern per module:

- `options`: the option table (`Config`) and the parsers of structured option values;
- `cli`: `parse_config(argv)`, command line + YAML/TOML file -> `Config`;
- `checks`: `validate_static` (options alone) and `validate_world` (against the launch);
- `paths`: `validate_paths` (data, tokenizer, checkpoints, output and cache folders).

Every check raises `ConfigError` (a ValueError) with one line naming the bad value and what is
accepted, so a run fails before any process trains.
"""
from fedbiobert.config.checks import resolve_for_world, server_schedule_for, validate_static, validate_world
from fedbiobert.config.cli import build_parser, load_config_file, parse_config
from fedbiobert.config.options import (ALGORITHMS, BOOL_FIELDS, FAULT_KINDS, IGNORED_FLAGS, SPLIT_ALGORITHMS, Config,
                                       ConfigError, parse_bool, parse_fl_aggregate, parse_gpu_ids, parse_injections)
from fedbiobert.config.paths import corpus_files_for, validate_paths

__all__ = [
    "ALGORITHMS", "BOOL_FIELDS", "corpus_files_for",
    "FAULT_KINDS", "IGNORED_FLAGS", "SPLIT_ALGORITHMS", "Config", "ConfigError",
    "build_parser", "load_config_file", "parse_bool", "parse_config", "parse_fl_aggregate", "parse_gpu_ids",
    "parse_injections", "resolve_for_world", "server_schedule_for", "validate_paths", "validate_static",
    "validate_world",
]

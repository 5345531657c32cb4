"""Every option of a run: its flag, default, meaning and validation, one concern per module:

- `options`: the option table (`Config`) and the lazy way to the algorithm registry (an algorithm's
  rules are its class's: `Config.rules`);
- `parsers`: `ConfigError` and the parsers of structured option values (booleans, --fl_aggregate, ...);
- `cli`: `parse_config(argv)`, command line + YAML/TOML file -> `Config`;
- `checks`: `validate_static` (options alone) and `validate_world` (against the launch);
- `paths`: `validate_paths` (data, tokenizer, checkpoints, output and cache folders);
- `lora`: LoRA's settings and their checks, without torch (the adapters: fedbiobert/lora.py);
- `warm_start`, `preflight`: --init_from's checks and adoption; every check of a run in order.

Every check raises `ConfigError` (a ValueError) with one line naming the bad value and what is
accepted, so a run fails before any process trains.
"""
from fedbiobert.config.checks import resolve_for_world, server_schedule_for, validate_static, validate_world
from fedbiobert.config.cli import build_parser, load_config_file, parse_config
from fedbiobert.config.options import (BOOL_FIELDS, FAULT_KINDS, IGNORED_FLAGS, Config, ConfigError, algorithm_rules,
                                       parse_bool, parse_fl_aggregate, parse_gpu_ids, parse_injections,
                                       registered_algorithms)
from fedbiobert.config.paths import corpus_files_for, validate_paths

__all__ = [
    "BOOL_FIELDS", "algorithm_rules", "corpus_files_for", "registered_algorithms",
    "FAULT_KINDS", "IGNORED_FLAGS", "Config", "ConfigError",
    "build_parser", "load_config_file", "parse_bool", "parse_config", "parse_fl_aggregate", "parse_gpu_ids",
    "parse_injections", "resolve_for_world", "server_schedule_for", "validate_paths", "validate_static",
    "validate_world",
]

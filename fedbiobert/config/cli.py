"""From a command line (plus an optional YAML/TOML `--config` file whose values the command line
overrides) to a frozen `Config`: `parse_config(argv)`, and the argparse parser behind `--help`."""
from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path
from typing import Any

from fedbiobert.config.options import (BOOL_FIELDS, IGNORED_FLAGS, LAUNCHER_FLAGS, Config, ConfigError, _require,
                                       field_help, parse_bool)

logger = logging.getLogger(__name__)


class _Parser(argparse.ArgumentParser):
    """argparse that raises ConfigError instead of printing its usage block on every rank:
    run.py then says the one line once per node."""

    def error(self, message: str):
        raise ConfigError(f"{message} (see run.py --help)")


def _argument_type(config_field: dataclasses.Field):
    annotation = str(config_field.type)
    if config_field.name in BOOL_FIELDS:
        return parse_bool
    if annotation.startswith("int"):
        return int
    if annotation.startswith("float"):
        return float
    return str.lower if config_field.metadata["fold_case"] else str


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends '(default: X)' unless the help text already says what the default is."""

    def _get_help_string(self, action):
        if "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="run.py", description="FedBioBERT: SplitFed pre-training of biomedical BERT/RoBERTa.",
        formatter_class=_HelpFormatter)
    parser.add_argument("--config", help="YAML or TOML file of options; the command line overrides it")
    groups: dict[str, argparse._ArgumentGroup] = {}
    for config_field in dataclasses.fields(Config):
        meta = config_field.metadata
        group = groups.setdefault(meta["group"], parser.add_argument_group(meta["group"]))
        flags = [f"--{config_field.name}"] + [f"--{alias}" for alias in meta["aliases"]]
        group.add_argument(*flags, dest=config_field.name, type=_argument_type(config_field),
                           default=config_field.default, help=field_help(config_field),
                           choices=meta["choices"] or None)
    ignored = parser.add_argument_group("accepted for compatibility, ignored for text")
    for name in IGNORED_FLAGS + LAUNCHER_FLAGS:
        ignored.add_argument(f"--{name}", default=None, help=argparse.SUPPRESS)
    return parser


def load_config_file(path: str) -> dict[str, Any]:
    """Read a YAML (.yaml/.yml) or TOML (.toml) file of option values, keyed by option name."""
    file_path = Path(path)
    _require(file_path.is_file(), f"--config '{path}' does not exist (accepted: a .yaml, .yml or .toml file)")
    _require(file_path.suffix in (".yaml", ".yml", ".toml"),
             f"--config '{path}' has suffix '{file_path.suffix}' (accepted: .yaml, .yml, .toml)")
    values = _parse_config_text(file_path)
    _require(isinstance(values, dict), f"--config '{path}' must hold a mapping of option names to values")
    return _normalise_file_values(values, path)


def _parse_config_text(path: Path) -> Any:
    import tomllib

    import yaml
    try:
        text = path.read_text(encoding="utf-8")
        return (yaml.safe_load(text) or {}) if path.suffix in (".yaml", ".yml") else tomllib.loads(text)
    except (ValueError, yaml.YAMLError) as error:  # UnicodeDecodeError and TOMLDecodeError are ValueErrors
        reason = " ".join(str(error).split())[:200]
        raise ConfigError(f"--config '{path}' cannot be parsed ({reason}) (accepted: UTF-8 "
                          f"{'TOML' if path.suffix == '.toml' else 'YAML'} mapping option names to values)") from None


def _normalise_file_values(values: dict[str, Any], path: str) -> dict[str, Any]:
    by_alias = {alias: f.name for f in dataclasses.fields(Config) for alias in f.metadata["aliases"]}
    known = {f.name: f for f in dataclasses.fields(Config)}
    normalised = {}
    for key, value in values.items():
        name = by_alias.get(key.lstrip("-"), key.lstrip("-"))
        if name not in known:
            raise ConfigError(f"--config '{path}' has unknown option '{key}' (see run.py --help)")
        if value is not None and not isinstance(value, bool):
            value = _file_value(known[name], key, value, path)
        normalised[name] = value
    return normalised


def _file_value(config_field: dataclasses.Field, key: str, value: Any, path: str) -> Any:
    try:
        return _argument_type(config_field)(value)
    except (ValueError, TypeError, argparse.ArgumentTypeError):
        kinds = {"int": "an integer", "float": "a number"}
        kind = "True or False" if config_field.name in BOOL_FIELDS else kinds.get(
            str(config_field.type).split(" ")[0], "a string")
        raise ConfigError(f"--config '{path}' sets {key} to {value!r} (accepted: {kind})") from None


def _import_algorithm_module(argv: list[str] | None) -> None:
    """--algorithm_module (on the command line, else in the --config file) is imported before the parser
    is built: the algorithm it registers is then among --algorithm's choices."""
    early = _Parser(add_help=False, allow_abbrev=False)  # --algorithm is not an abbreviation of it here
    early.add_argument("--config")
    early.add_argument("--algorithm_module")
    known, _ = early.parse_known_args(argv)
    module = known.algorithm_module
    if module is None and known.config:
        module = load_config_file(known.config).get("algorithm_module")
    if module:
        from fedbiobert.algorithms import import_algorithm_module  # see options.algorithm_rules for why here
        import_algorithm_module(module)


def parse_config(argv: list[str] | None = None) -> Config:
    """Command line (+ config file) -> Config. ConfigError (one line) on unknown flags or bad values."""
    _import_algorithm_module(argv)
    parser = build_parser()
    first_pass = parser.parse_args(argv)
    if first_pass.config:
        parser.set_defaults(**load_config_file(first_pass.config))
    namespace = vars(parser.parse_args(argv))
    for name in IGNORED_FLAGS:
        if namespace.pop(name) is not None:
            logger.warning("--%s means nothing for text models; ignored", name)
    for name in LAUNCHER_FLAGS:
        if namespace.pop(name) is not None:
            logger.warning("--%s is the launcher's option (e.g. deepspeed --hostfile H run.py ...), not run.py's; "
                           "ignored here (rank and local rank come from the launcher's environment)", name)
    namespace.pop("config")
    return Config(**namespace)

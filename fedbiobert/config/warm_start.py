"""Checks and defaults of a warm start (`--init_from DIR`): continual pre-training of an HF model folder.

A warm start fixes what the folder fixes. Its layer count, architecture, positions, shape and vocabulary
are the checkpoint's, so:

- the tokenizer defaults to the folder's own (vocab.txt / tokenizer.json): a vocabulary trained on the
  corpus would look the checkpoint's embedding rows up with unrelated ids. A `--tokenizer` given beside
  it must hold the same vocabulary (token -> id, compared by content, not size);
- `--hidden_size`, `--num_attention_heads`, `--intermediate_size` and `--vocab_size` come from the
  folder; a value given that contradicts it is one line (a value left at its default is simply replaced);
- `--max_len` beyond the checkpoint's position table is one line.

Every check reads only config.json and the tokenizer files (well under a second), never the weights.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from fedbiobert.config.lora import check_lora, layer_linears_of_config
from fedbiobert.config.options import Config, ConfigError, _require

# Option name -> the config.json key a warm start takes it from.
SHAPE_OPTIONS = {"hidden_size": "hidden_size", "num_attention_heads": "num_attention_heads",
                 "intermediate_size": "intermediate_size", "vocab_size": "vocab_size"}
_TOKENIZER_FILES = ("tokenizer.json", "vocab.txt")


def validate_init_from(config: Config) -> None:
    """One ConfigError line for the first thing of --init_from that cannot start this run."""
    hf_config = read_model_config(config.init_from)
    _check_architecture(config, hf_config)
    _check_positions(config, hf_config)
    _check_shape(config, hf_config)
    _check_tokenizer(config, hf_config)
    _check_lora_targets(config, hf_config)


def adopt_init_from(config: Config) -> Config:
    """The config a warm start runs with: shape options and (unless given) the tokenizer from the folder.
    Call after `validate_init_from`; a run without --init_from is returned unchanged."""
    if config.init_from is None:
        return config
    hf_config = read_model_config(config.init_from)
    adopted = {option: int(hf_config[key]) for option, key in SHAPE_OPTIONS.items() if key in hf_config}
    if config.tokenizer is None:
        adopted["tokenizer"] = config.init_from
    return dataclasses.replace(config, **adopted)


def read_model_config(init_from: str) -> dict:
    config_file = Path(init_from) / "config.json"
    _require(config_file.is_file(), f"--init_from '{init_from}' has no config.json (accepted: an HF model folder)")
    try:
        return json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise ConfigError(f"--init_from '{config_file}' is not readable JSON ({error})") from None


def _check_lora_targets(config: Config, hf_config: dict) -> None:
    """--lora_targets against the folder's encoder layers, --lora_rank against their widths."""
    if config.lora is None:
        return
    try:
        check_lora(config.lora, layer_linears_of_config(int(hf_config["hidden_size"]),
                                                        int(hf_config["intermediate_size"])))
    except (KeyError, ValueError) as error:
        raise ConfigError(f"--init_from '{config.init_from}': {error}") from None


def has_tokenizer(folder: str) -> bool:
    return any((Path(folder) / name).is_file() for name in _TOKENIZER_FILES)


def _check_architecture(config: Config, hf_config: dict) -> None:
    layers = hf_config.get("num_hidden_layers")
    _require(layers == config.num_layers,
             f"--num_client_encoder {config.num_client_encoder} + --num_server_encoder "
             f"{config.num_server_encoder} = {config.num_layers} layers, but --init_from "
             f"'{config.init_from}' has {layers}")
    model_type = hf_config.get("model_type")
    _require(model_type == config.arch,
             f"--arch {config.arch} but --init_from '{config.init_from}' is a '{model_type}' model "
             f"(accepted: a {config.arch} folder, or --arch matching the folder: bert or roberta)")
    _require(not hf_config.get("is_decoder", False),
             f"--init_from '{config.init_from}' is a decoder (is_decoder true); accepted: a masked-LM encoder")


def checkpoint_positions(hf_config: dict) -> int | None:
    """Tokens a block may hold: the position table, less RoBERTa's pad_token_id + 1 offset."""
    table = hf_config.get("max_position_embeddings")
    if table is None:
        return None
    offset = int(hf_config.get("pad_token_id", 1)) + 1 if hf_config.get("model_type") == "roberta" else 0
    return int(table) - offset


def _check_positions(config: Config, hf_config: dict) -> None:
    positions = checkpoint_positions(hf_config)
    _require(positions is None or config.max_len <= positions,
             f"--max_len {config.max_len} exceeds the {positions} positions of --init_from '{config.init_from}' "
             f"(accepted: --max_len <= {positions})")


def _check_shape(config: Config, hf_config: dict) -> None:
    defaults = {field.name: field.default for field in dataclasses.fields(Config)}
    for option, key in SHAPE_OPTIONS.items():
        given, fixed = getattr(config, option), hf_config.get(key)
        _require(fixed is None or given in (fixed, defaults[option]),
                 f"--{option} {given} contradicts --init_from '{config.init_from}', whose {key} is {fixed} "
                 f"(accepted: {fixed}, or leave --{option} out: a warm start takes it from the folder)")


def _check_tokenizer(config: Config, hf_config: dict) -> None:
    from fedbiobert.data.tokenizer import load_tokenizer
    own = has_tokenizer(config.init_from)
    _require(own or config.tokenizer is not None,
             f"--init_from '{config.init_from}' has no tokenizer ({' or '.join(_TOKENIZER_FILES)}); accepted: "
             "--tokenizer PATH naming the vocabulary the checkpoint was trained with")
    given = _load(load_tokenizer, config.tokenizer, "--tokenizer") if config.tokenizer else None
    if own and given is not None:
        folder = _load(load_tokenizer, config.init_from, "--init_from")
        _require(given.get_vocab() == folder.get_vocab(),
                 f"--tokenizer '{config.tokenizer}' has another vocabulary than --init_from '{config.init_from}' "
                 f"({len(given)} against {len(folder)} tokens, or the same tokens under other ids); accepted: "
                 "the checkpoint's own tokenizer (leave --tokenizer out to use it)")
    tokens = len(given) if given is not None else None
    vocab_size = hf_config.get("vocab_size")
    _require(tokens is None or vocab_size is None or tokens <= vocab_size,
             f"--tokenizer '{config.tokenizer}' has {tokens} tokens but --init_from '{config.init_from}' has "
             f"{vocab_size} embedding rows (accepted: the tokenizer the checkpoint was trained with)")


def _load(load_tokenizer, path: str, flag: str):
    try:
        return load_tokenizer(path)
    except ValueError as error:
        raise ConfigError(f"{flag}: {error}") from None

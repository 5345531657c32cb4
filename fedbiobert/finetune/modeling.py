"""The model to fine-tune: an HF folder (an engine export `OUT/round{k}` or any masked-LM/encoder
checkpoint) or, with `--model none`, a random initialisation of the same kind of architecture (the
no-pre-training control). Either way a fresh task head (token or sequence classification) on top.

The weights a folder lacks (the head, and the pooler of an MLM export) are re-initialised from the
run's seed alone, one generator per weight name: the same seed gives the same head on every rank and
whatever the global RNG held or the order in which HF loaded the weights.

`freeze_encoder` turns a model into a probe: only the task head trains (see `head_parameter_names`).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (AutoConfig, AutoModelForSequenceClassification, AutoModelForTokenClassification,
                          BertForSequenceClassification, BertForTokenClassification,
                          RobertaForSequenceClassification, RobertaForTokenClassification)
from transformers.models.auto.modeling_auto import (MODEL_FOR_MASKED_LM_MAPPING_NAMES,
                                                    MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES)
from transformers.utils import logging as hf_logging

from fedbiobert.data.tokenizer import load_tokenizer
from fedbiobert.finetune.errors import InputError
from fedbiobert.model.build import ModelSpec, build_config, initialise_missing

logger = logging.getLogger(__name__)

TASKS = ("ner", "classification")
_AUTO_CLASSES = {"ner": AutoModelForTokenClassification, "classification": AutoModelForSequenceClassification}
_RANDOM_CLASSES = {("bert", "ner"): BertForTokenClassification, ("roberta", "ner"): RobertaForTokenClassification,
                   ("bert", "classification"): BertForSequenceClassification,
                   ("roberta", "classification"): RobertaForSequenceClassification}
# Weights a masked-LM checkpoint does not have and a task model adds: they may start random.
_NEW_WEIGHT_PREFIXES = ("classifier.", "pooler.", "bert.pooler.", "roberta.pooler.")


@dataclass
class RandomModelSize:
    arch: str = "bert"
    hidden_size: int = 128
    num_hidden_layers: int = 4
    num_attention_heads: int = 2
    intermediate_size: int = 512


def _tokenizer_or_error(path: str | Path, flag: str):
    try:
        return load_tokenizer(path)
    except ValueError as error:
        raise InputError(f"{flag} '{path}': {error}") from None


def _check_encoder_config(model_dir: Path):
    accepted = "accepted: an HF folder written by save_pretrained (e.g. OUT/round3) or none"
    if not (model_dir / "config.json").is_file():
        raise InputError(f"--model '{model_dir}' is not a folder with a config.json ({accepted})")
    try:
        config = AutoConfig.from_pretrained(str(model_dir), local_files_only=True)
    except (OSError, ValueError, KeyError) as error:
        raise InputError(f"--model '{model_dir}': config.json cannot be read "
                         f"({str(error).strip().splitlines()[0][:120]}) ({accepted})") from None
    model_type = getattr(config, "model_type", None)
    if (model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES or model_type not in
            MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES or getattr(config, "is_decoder", False)):
        raise InputError(f"--model '{model_dir}' is a {model_type!r} model, not a masked-LM encoder "
                         "(accepted: an encoder such as bert or roberta)")
    return config


def check_tokenizer_fits(tokenizer, vocab_size: int, source: str) -> None:
    if len(tokenizer) > vocab_size:
        raise InputError(f"tokenizer of {source} has {len(tokenizer)} tokens but the model's vocab_size is "
                         f"{vocab_size} (accepted: the tokenizer the model was trained with)")
    if len(tokenizer) < vocab_size:
        logger.warning("tokenizer of %s has %d tokens, the model %d embeddings", source, len(tokenizer), vocab_size)


def check_max_len(config, max_len: int) -> None:
    positions = config.max_position_embeddings - (config.pad_token_id + 1 if config.model_type == "roberta" else 0)
    if max_len > positions:
        raise InputError(f"--max_len {max_len} exceeds the model's {positions} positions (accepted: <= {positions})")


def load_pretrained(model_dir: str | Path, task: str, num_labels: int, tokenizer_path: str | None, max_len: int,
                    seed: int):
    """(model with a fresh task head drawn from `seed`, tokenizer) from an HF folder; InputError if it
    is not an encoder or its tokenizer does not fit its vocabulary."""
    model_dir = Path(model_dir)
    config = _check_encoder_config(model_dir)
    tokenizer = _tokenizer_or_error(tokenizer_path or model_dir, "--tokenizer" if tokenizer_path else "--model")
    check_tokenizer_fits(tokenizer, config.vocab_size, f"'{tokenizer_path or model_dir}'")
    check_max_len(config, max_len)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "some weights newly initialized" is expected: the task head
    try:
        model, info = _AUTO_CLASSES[task].from_pretrained(
            str(model_dir), num_labels=num_labels, local_files_only=True, output_loading_info=True)
    except (OSError, ValueError, RuntimeError) as error:
        raise InputError(f"--model '{model_dir}': weights cannot be loaded "
                         f"({str(error).strip().splitlines()[0][:160]})") from None
    finally:
        hf_logging.set_verbosity(verbosity)
    missing = sorted(key for key in info["missing_keys"] if not key.startswith(_NEW_WEIGHT_PREFIXES))
    if missing:
        raise InputError(f"--model '{model_dir}' lacks {len(missing)} encoder weight(s), e.g. {missing[0]!r}: "
                         "not a masked-LM/encoder checkpoint")
    reinitialise(model, sorted(info["missing_keys"]), seed)
    return model, tokenizer


def reinitialise(model: torch.nn.Module, names: list[str], seed: int) -> None:
    """Draw the task-head weights `names` from `seed` alone (model.build.initialise_missing): from_pretrained
    draws them from the global RNG, which differs between ranks and between seeds of one process."""
    initialise_missing(model, names, seed, purpose="task head")
    logger.info("newly initialised from seed %d: %s", seed, ", ".join(names) or "none (the folder has a head)")


def build_random(size: RandomModelSize, task: str, num_labels: int, tokenizer_path: str | None,
                 max_len: int, seed: int):
    """(randomly initialised model of `size`, tokenizer): the no-pre-training control."""
    if not tokenizer_path:
        raise InputError("--model none needs --tokenizer (a vocab.txt or an HF tokenizer folder, e.g. the "
                         "pre-trained model's folder, so both use the same tokenizer)")
    tokenizer = _tokenizer_or_error(tokenizer_path, "--tokenizer")
    spec = ModelSpec(arch=size.arch, vocab_size=len(tokenizer), hidden_size=size.hidden_size,
                     num_attention_heads=size.num_attention_heads, intermediate_size=size.intermediate_size,
                     num_layers=size.num_hidden_layers, max_len=max_len, pad_token_id=tokenizer.pad_token_id)
    try:
        config = build_config(spec)
    except ValueError as error:
        raise InputError(f"--model none: {error}") from None
    config.num_labels = num_labels
    torch.manual_seed(seed)
    return _RANDOM_CLASSES[(size.arch, task)](config), tokenizer


def head_parameter_names(model: torch.nn.Module) -> list[str]:
    """The task head's parameters: the classifier, plus BERT's pooler for classification, so that
    BERT and RoBERTa (whose classification head holds its own dense layer) both train dense + tanh +
    linear on the first token; for NER the head is the linear token classifier alone."""
    return [name for name, _ in model.named_parameters() if name.startswith(_NEW_WEIGHT_PREFIXES)]


def freeze_encoder(model: torch.nn.Module) -> list[str]:
    """A probe: requires_grad False on everything but the task head; returns the head's names."""
    head = head_parameter_names(model)
    if not head:
        raise ValueError(f"{type(model).__name__} has no task head parameters to train")
    for name, param in model.named_parameters():
        param.requires_grad_(name in head)
    logger.info("probe: encoder frozen, training only %s (%d parameters)", ", ".join(head),
                sum(param.numel() for param in model.parameters() if param.requires_grad))
    return head

"""A probe's frozen encoder runs once: its features are cached and the task head trains on them.

A probe (`--probe`) trains only the task head on a frozen encoder kept in eval mode, so the encoder's
output for an example never changes: `FeatureCache` computes it once per invocation (one pass over
train, dev and test, shared by every epoch, round and seed whose encoder weights are the same) and
`head_on_features` makes the model run its head alone on those features, exactly as HF's forward
does after the encoder (dropout included, so the dropout masks drawn from the seeded global RNG
are the very ones of the uncached path: same shapes, same order).

Features are cached per example, so batching (batching.training_batches: seeded order, batch
composition) is untouched; `collate` pads them like the token ids. Attention masks make an
example's features independent of the other examples of its batch (up to float noise).
"""
from __future__ import annotations

import hashlib
import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import chain

import torch
from torch.nn import BCEWithLogitsLoss, CrossEntropyLoss, MSELoss
from transformers import (BertForSequenceClassification, BertForTokenClassification,
                          RobertaForSequenceClassification, RobertaForTokenClassification)
from transformers.modeling_outputs import SequenceClassifierOutput, TokenClassifierOutput

from fedbiobert.constants import IGNORE_INDEX
from fedbiobert.finetune.batching import eval_batches

logger = logging.getLogger(__name__)


@dataclass
class CachedExample:
    """An encoded example (data_ner.Chunk, data_classification.Encoded) with its encoder features."""
    input_ids: list[int]
    labels: int | list[int]
    features: torch.Tensor  # float32 [len(input_ids), hidden] (token task) or [hidden] (first token, sequence task)


# The task head of each model class, applied to cached features as HF's forward applies it to the
# encoder's last hidden states (token task: [batch, width, hidden]; sequence task: [batch, hidden]).
def _token_head(model, features: torch.Tensor) -> torch.Tensor:
    return model.classifier(model.dropout(features))  # Bert/RobertaForTokenClassification: dropout, linear


def _bert_sequence_head(model, features: torch.Tensor) -> torch.Tensor:
    # BertForSequenceClassification: the pooler (dense + tanh on the first token), dropout, linear
    return model.classifier(model.dropout(model.bert.pooler(features.unsqueeze(1))))


def _roberta_sequence_head(model, features: torch.Tensor) -> torch.Tensor:
    # RobertaClassificationHead: first token, dropout, dense, tanh, dropout, out_proj
    return model.classifier(features.unsqueeze(1))


_HEADS = {BertForTokenClassification: _token_head, RobertaForTokenClassification: _token_head,
          BertForSequenceClassification: _bert_sequence_head,
          RobertaForSequenceClassification: _roberta_sequence_head}


def supports_cached_head(model) -> bool:
    """True for the model classes whose head `head_on_features` knows (BERT and RoBERTa); others
    (any other encoder a folder may hold) probe through the full forward pass."""
    if type(model) not in _HEADS:
        return False
    return not isinstance(model, BertForSequenceClassification) or model.bert.pooler is not None


def _token_level(model) -> bool:
    return type(model) in (BertForTokenClassification, RobertaForTokenClassification)


def _sequence_loss(model, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The loss of HF's *ForSequenceClassification.forward (config.problem_type, set on first use)."""
    config, num_labels = model.config, model.num_labels
    if config.problem_type is None:
        if num_labels == 1:
            config.problem_type = "regression"
        elif labels.dtype in (torch.long, torch.int):
            config.problem_type = "single_label_classification"
        else:
            config.problem_type = "multi_label_classification"
    if config.problem_type == "regression":
        return MSELoss()(logits.squeeze(), labels.squeeze()) if num_labels == 1 else MSELoss()(logits, labels)
    if config.problem_type == "single_label_classification":
        return CrossEntropyLoss()(logits.view(-1, num_labels), labels.view(-1))
    return BCEWithLogitsLoss()(logits, labels)


@contextmanager
def head_on_features(model):
    """While open, `model(features=..., labels=..., ...)` runs the task head alone on cached features
    (a batch from batching.collate of CachedExamples; input_ids and attention_mask are ignored) and
    returns HF's output (loss, logits). Parameters, state_dict, train/eval modes are the model's own,
    so the training loop, FedAvg and early stopping work on it unchanged."""
    head = _HEADS[type(model)]

    def forward(features: torch.Tensor, labels: torch.Tensor | None = None, input_ids=None, attention_mask=None):
        logits = head(model, features)
        if _token_level(model):
            loss = None if labels is None else \
                CrossEntropyLoss(ignore_index=IGNORE_INDEX)(logits.view(-1, model.num_labels), labels.view(-1))
            return TokenClassifierOutput(loss=loss, logits=logits)
        return SequenceClassifierOutput(loss=None if labels is None else _sequence_loss(model, logits, labels),
                                        logits=logits)

    model.forward = forward  # an instance attribute: nn.Module.__call__ runs it instead of the class's
    try:
        yield model
    finally:
        del model.forward


@torch.no_grad()
def encoder_features(model, examples: list, pad_id: int, batch_size: int) -> list[torch.Tensor]:
    """The frozen encoder's last hidden states of each example, as the model's own forward computes
    them (input_ids, attention_mask; eval mode): [length, hidden] per example for a token task, the
    first token's [hidden] for a sequence task (all its head reads)."""
    was_training = model.training
    model.eval()
    token_level = _token_level(model)
    order, batches = eval_batches(examples, batch_size, pad_id)
    computed = []
    try:
        for batch in batches:
            hidden = model.base_model(input_ids=batch["input_ids"],
                                      attention_mask=batch["attention_mask"]).last_hidden_state.float()
            for row, length in zip(hidden, batch["attention_mask"].sum(1).tolist()):
                computed.append((row[:length] if token_level else row[0]).clone())  # a copy, not a view of the batch
    finally:
        model.train(was_training)
    features = [None] * len(examples)
    for index, value in zip(order, computed):
        features[index] = value
    return features


def encoder_fingerprint(model) -> str:
    """A digest of everything the features depend on: the model class and its frozen weights and
    buffers (the trained head, e.g. a freshly drawn classifier or pooler, is left out)."""
    digest = hashlib.blake2b(type(model).__name__.encode(), digest_size=16)
    for name, tensor in chain(model.named_parameters(), model.named_buffers()):
        if isinstance(tensor, torch.nn.Parameter) and tensor.requires_grad:
            continue
        digest.update(f"{name} {tensor.dtype} {tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().cpu().contiguous().flatten().view(torch.uint8).numpy())
    return digest.hexdigest()


def _examples_digest(examples: list) -> str:
    digest = hashlib.blake2b(digest_size=16)
    for example in examples:
        digest.update(repr((example.input_ids, example.labels)).encode())
    return digest.hexdigest()


class FeatureCache:
    """Encoder features of a probe's splits, kept for one invocation (all its seeds).

    Entries are keyed by the encoder's fingerprint and the examples' ids and labels; a different
    encoder (say `--model none`, a new random encoder per seed) drops the old entries, so at most
    one encoder's features are held. Memory: float32, one [tokens, hidden] tensor per NER example
    (1,000 NCBI sentences at hidden 384 ~ 50 MB; full BC5CDR train, ~5k sentences, ~250 MB; at
    hidden 768 twice that) and one [hidden] vector per classification example (~1.5 KB at 384),
    for train, dev and test together.
    """

    def __init__(self) -> None:
        self._fingerprint: str | None = None
        self._entries: dict[tuple[str, str], list[CachedExample]] = {}

    def examples(self, model, splits: dict[str, list], pad_id: int, batch_size: int) -> dict[str, list[CachedExample]]:
        """{split name: its examples with their features}, computing (in one pass) those not cached."""
        fingerprint = encoder_fingerprint(model)
        if fingerprint != self._fingerprint:
            self._fingerprint, self._entries = fingerprint, {}
        keys = {name: (name, _examples_digest(examples)) for name, examples in splits.items()}
        missing = [name for name in splits if keys[name] not in self._entries]
        if missing:
            started = time.perf_counter()
            for name in missing:
                features = encoder_features(model, splits[name], pad_id, batch_size)
                self._entries[keys[name]] = [CachedExample(example.input_ids, example.labels, value)
                                             for example, value in zip(splits[name], features)]
            logger.info("probe: encoder features of %d examples computed once (%.1f s)",
                        sum(len(splits[name]) for name in missing), time.perf_counter() - started)
        else:
            logger.info("probe: encoder features of %d examples reused", sum(map(len, splits.values())))
        return {name: self._entries[keys[name]] for name in splits}

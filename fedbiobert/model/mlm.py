"""Masked-language-model loss computed at the masked positions only.

This file owns selecting masked positions from MLM labels, gathering the hidden states
there, the cross-entropy over them, and the reference loss of an unsplit HF model. The
vocabulary projection ([M,H] x [H,V]) is what dominates a small model's cost, so the
split code applies heads to the M masked rows only, never to all B*T positions.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import torch
from torch.nn import functional

if TYPE_CHECKING:  # only a type here: importing transformers costs seconds the option checks need not pay
    from transformers import PreTrainedModel

from fedbiobert.constants import IGNORE_INDEX

logger = logging.getLogger(__name__)


def masked_positions(labels: torch.Tensor) -> torch.Tensor:
    """[B,T] labels -> [M] flat (row-major) indices of the positions whose label is not IGNORE_INDEX."""
    if labels.dim() != 2:
        raise ValueError(f"labels shape {tuple(labels.shape)} is invalid; accepted: [B, T]")
    return torch.nonzero(labels.reshape(-1) != IGNORE_INDEX, as_tuple=True)[0]


def gather_masked(hidden: torch.Tensor, flat_positions: torch.Tensor) -> torch.Tensor:
    """[B,T,H] hidden states + [M] flat positions -> [M,H] (differentiable w.r.t. hidden)."""
    if hidden.dim() != 3:
        raise ValueError(f"hidden shape {tuple(hidden.shape)} is invalid; accepted: [B, T, H]")
    return hidden.reshape(-1, hidden.shape[-1]).index_select(0, flat_positions)


def masked_targets(labels: torch.Tensor, flat_positions: torch.Tensor) -> torch.Tensor:
    """[B,T] labels + [M] flat positions -> [M] target token ids."""
    return labels.reshape(-1).index_select(0, flat_positions)


def mlm_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of [M,V] logits against [M] targets.

    With no masked position (M == 0) the loss is a graph-connected 0 instead of the NaN
    an empty mean gives, so one unlucky batch cannot poison the weights.
    """
    if logits.dim() != 2 or target.shape != logits.shape[:1]:
        raise ValueError(f"logits/target shapes {tuple(logits.shape)}/{tuple(target.shape)} are invalid; "
                         "accepted: [M, V] and [M]")
    if logits.shape[0] == 0:
        logger.debug("batch without masked positions: MLM loss is 0")
        return logits.sum() * 0.0
    return functional.cross_entropy(logits.float(), target)


def full_mlm_loss(model: PreTrainedModel, batch_input_ids: torch.Tensor, attention_mask: torch.Tensor,
                  labels: torch.Tensor) -> torch.Tensor:
    """Reference: the unsplit HF model's own MLM loss (logits everywhere, IGNORE_INDEX ignored)."""
    return model(input_ids=batch_input_ids, attention_mask=attention_mask, labels=labels).loss

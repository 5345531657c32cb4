"""BERT dynamic masking for masked-language-model pre-training.

Positions are chosen with probability ``mlm_probability`` among non-special tokens (pad,
cls/sep, bos/eos, ... are never chosen). Of the chosen positions 80% become the mask id,
10% a random non-special token and 10% stay unchanged; labels hold the original id there
and -100 (ignored by cross-entropy) everywhere else.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from fedbiobert.constants import IGNORE_INDEX

MASK_FRACTION = 0.8
RANDOM_FRACTION = 0.1  # the remaining 10% keep their original token


@dataclass(frozen=True)
class MaskingSpec:
    """What masking needs to know about the tokenizer; special ids must include pad."""

    mask_token_id: int
    vocab_size: int
    special_token_ids: tuple[int, ...]
    mlm_probability: float = 0.15

    def __post_init__(self) -> None:
        if not 0.0 < self.mlm_probability <= 1.0:
            raise ValueError(
                f"mlm_probability {self.mlm_probability!r} is out of range (accepted: 0 < p <= 1)"
            )
        if not 0 <= self.mask_token_id < self.vocab_size:
            raise ValueError(
                f"mask_token_id {self.mask_token_id} is outside the vocab "
                f"(accepted: 0 <= id < {self.vocab_size})"
            )
        if len(set(self.special_token_ids)) >= self.vocab_size:
            raise ValueError(
                f"special_token_ids {self.special_token_ids} leave no ordinary token in a vocab of "
                f"{self.vocab_size} (accepted: fewer special ids than vocab_size)"
            )

    @classmethod
    def from_tokenizer(cls, tokenizer, mlm_probability: float = 0.15) -> MaskingSpec:
        """Spec for ``tokenizer``: its mask id, full size and all special ids (pad included)."""
        if tokenizer.mask_token_id is None:
            raise ValueError(
                f"tokenizer {type(tokenizer).__name__} has no mask token (accepted: one with a mask token)"
            )
        special_ids = set(tokenizer.all_special_ids)
        if tokenizer.pad_token_id is not None:
            special_ids.add(tokenizer.pad_token_id)
        return cls(
            mask_token_id=int(tokenizer.mask_token_id),
            vocab_size=len(tokenizer),
            special_token_ids=tuple(sorted(int(token_id) for token_id in special_ids)),
            mlm_probability=mlm_probability,
        )


@functools.lru_cache(maxsize=8)
def _special_ids_tensor(spec: MaskingSpec) -> torch.Tensor:
    return torch.tensor(spec.special_token_ids, dtype=torch.int64)


@functools.lru_cache(maxsize=8)
def _replacement_ids(spec: MaskingSpec) -> torch.Tensor:
    """Ordinary (non-special) vocab ids that the 10% random replacements draw from."""
    ordinary = torch.ones(spec.vocab_size, dtype=torch.bool)
    ordinary[[i for i in spec.special_token_ids if 0 <= i < spec.vocab_size]] = False
    return ordinary.nonzero().flatten()


def mask_tokens(
    input_ids: torch.Tensor, spec: MaskingSpec, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (masked inputs, labels) for a LongTensor [B, T]; ``input_ids`` is left intact."""
    if input_ids.ndim != 2 or input_ids.dtype != torch.int64:
        raise ValueError(
            f"input_ids has shape {tuple(input_ids.shape)} and dtype {input_ids.dtype} "
            "(accepted: int64 [B, T])"
        )
    eligible = ~torch.isin(input_ids, _special_ids_tensor(spec).to(input_ids.device))
    chosen = (_uniform(input_ids, generator) < spec.mlm_probability) & eligible
    if not chosen.any():
        chosen = _force_one(eligible, generator)
    # Action and replacement are drawn for every position (not just the chosen ones):
    # vectorised, and the same seed and input always give the same result.
    action = _uniform(input_ids, generator)
    random_pick = torch.randint(
        len(_replacement_ids(spec)), input_ids.shape, generator=generator, device=generator.device
    ).to(input_ids.device)
    inputs = input_ids.clone()
    to_mask = chosen & (action < MASK_FRACTION)
    to_random = chosen & (action >= MASK_FRACTION) & (action < MASK_FRACTION + RANDOM_FRACTION)
    inputs[to_mask] = spec.mask_token_id
    inputs[to_random] = _replacement_ids(spec).to(input_ids.device)[random_pick[to_random]]
    labels = torch.where(chosen, input_ids, torch.full_like(input_ids, IGNORE_INDEX))
    return inputs, labels


def _uniform(like: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    # Drawn on the generator's device so a CPU generator also works for GPU inputs.
    return torch.rand(like.shape, generator=generator, device=generator.device).to(like.device)


def _force_one(eligible: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Choose one random eligible position, so the MLM loss of the batch is defined."""
    candidates = eligible.flatten().nonzero().flatten()
    if len(candidates) == 0:
        raise ValueError("input_ids hold only special/pad tokens (accepted: at least one maskable token)")
    pick = torch.randint(len(candidates), (1,), generator=generator, device=generator.device).item()
    chosen = torch.zeros_like(eligible).flatten()
    chosen[candidates[pick]] = True
    return chosen.view_as(eligible)

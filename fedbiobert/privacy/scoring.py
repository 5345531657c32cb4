"""How much of the silo's text an attack recovered, and what the baselines recover without activations.

Scores are over the scored positions (real text tokens; [CLS], [SEP] and padding are left out, since any
attacker knows them): top-1 and top-5 token recovery, the same over entity tokens only, and the share of
sequences whose every scored token is the top-1 guess (exact recovery).

Baselines, from the public training text alone: `unigram` (always the most frequent public tokens) and
`position` (the most frequent public tokens at each position): what an attacker recovers from the
sequence's shape alone, the floor an attack must clear to have read anything from the activations.
"""
from __future__ import annotations

import torch

from fedbiobert.privacy.texts import Sequences


def recovery(guesses: torch.Tensor, silo: Sequences) -> dict:
    """`guesses`: (M, k>=5) ranked token ids for the M scored positions of `silo` (row-major order)."""
    targets = silo.input_ids[silo.scored]
    hit1 = guesses[:, 0] == targets
    hit5 = (guesses[:, :5] == targets[:, None]).any(dim=1)
    entity = silo.entity[silo.scored]
    per_sequence = torch.zeros(silo.scored.shape, dtype=torch.bool)
    per_sequence[silo.scored] = ~hit1
    recovered_whole = ~per_sequence.any(dim=1)
    has_text = silo.scored.any(dim=1)
    return {"top1": _mean(hit1), "top5": _mean(hit5), "entity_top1": _mean(hit1[entity]),
            "entity_top5": _mean(hit5[entity]),
            "exact_sequences": _mean(recovered_whole[has_text]), "tokens": int(targets.shape[0]),
            "entity_tokens": int(entity.sum()), "sequences": int(has_text.sum())}


def _mean(flags: torch.Tensor) -> float | None:
    return round(float(flags.float().mean()), 4) if flags.numel() else None


def _most_frequent(ids: torch.Tensor, k: int) -> torch.Tensor:
    values, counts = torch.unique(ids, return_counts=True)
    best = values[counts.argsort(descending=True)[:k]]
    return torch.cat([best, best.new_full((k - best.shape[0],), -1)]) if best.shape[0] < k else best


def position_guesses(public: Sequences, silo: Sequences, k: int = 5) -> torch.Tensor:
    """(M, k) the public text's k most frequent tokens at each scored position of `silo` (the unigram
    top-k where the public text has no token at that position)."""
    unigram = _most_frequent(public.input_ids[public.scored], k)
    table = []
    for position in range(silo.input_ids.shape[1]):
        column = public.scored[:, position] if position < public.scored.shape[1] else None
        seen = public.input_ids[:, position][column] if column is not None else torch.empty(0, dtype=torch.long)
        table.append(_most_frequent(seen, k) if seen.numel() >= k else unigram)
    table = torch.stack(table)  # (T, k)
    positions = torch.arange(silo.input_ids.shape[1]).expand_as(silo.input_ids)[silo.scored]
    return table[positions]


def unigram_guesses(public: Sequences, silo: Sequences, k: int = 5) -> torch.Tensor:
    """(M, k) the public text's k most frequent tokens, for every scored position of `silo`."""
    return _most_frequent(public.input_ids[public.scored], k).expand(silo.tokens(), k)


def baselines(public: Sequences, silo: Sequences) -> dict:
    return {"unigram": recovery(unigram_guesses(public, silo), silo),
            "position": recovery(position_guesses(public, silo), silo)}

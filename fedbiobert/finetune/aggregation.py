"""How a federated fine-tuning round turns the silos' models into the next global model (`--aggregation`),
and how many bytes that costs.

- `weighted` (`Aggregation`): FedAvg (McMahan et al. 2017) of the exchanged tensors, silo k weighted
  by its number of training examples n_k. With `--algorithm fedlora` the exchanged tensors are the
  adapters' A and B (and the task head): Fed-MedLoRA. The pre-training engine's server optimisers
  then step from the round-start values towards that average (server_optimizer.py).
- `adaptive` (`AdaptiveAggregation`): Fed-MedLoRA+. The server scores each silo's received model on the
  validation split it holds (mean loss over its labelled tokens or examples, `validation_loss`) and
  weights silo k by exp(1 - loss_k), normalised over the round's silos; the weights are logged and
  kept in the record per round.
- `exact` (`ExactAggregation`, fedlora only): the mean of A times the mean of B is not the mean update;
  the mean of the products, sum_k n_k B_k A_k / sum_k n_k, is. It is folded into the frozen base
  (W += scaling x mean B_k A_k) and every adapter restarts (B = 0, A drawn from the run's seed and the
  round): the model then computes exactly the average of the silos' models (linear in the update).
  Folded rather than kept as a separate dense delta because a delta would cost a dense matrix per
  adapted module in memory and in every forward, and the silos can fold it themselves from what they
  receive; the base therefore changes each round by the averaged update and nothing else (no silo
  trains it).

Bytes (`RoundBytes`): each silo of a round uploads its exchanged tensors; it downloads the averaged
ones (weighted, adaptive) or, for exact, every silo's A and B of the round (from which it forms the
mean product itself: a dense update would be a full matrix per module) plus the averaged head. Sizes
are the tensors' own (fp32: the fine-tuner does not compress), counted from the tensors exchanged.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch

from fedbiobert.aggregate import WeightedSum, averaged_keys
from fedbiobert.constants import IGNORE_INDEX
from fedbiobert.lora import adapted_prefixes, adapter_product, fold_into_base, is_adapter_key, state_nbytes
from fedbiobert.seeding import derive_seed
from fedbiobert.server_optimizer import ServerOptimizer

logger = logging.getLogger(__name__)

AGGREGATIONS = ("weighted", "adaptive", "exact")


@dataclass
class RoundBytes:
    silos: int
    up_per_silo: int
    down_per_silo: int

    def record(self) -> dict:
        return {"silos": self.silos, "bytes_up_per_silo": self.up_per_silo, "bytes_down_per_silo": self.down_per_silo,
                "bytes_up_per_round": self.silos * self.up_per_silo,
                "bytes_down_per_round": self.silos * self.down_per_silo}


class Aggregation:
    """`weighted`: FedAvg of the exchanged keys by examples, then the server optimiser's step."""
    name = "weighted"

    def __init__(self, keys: list[str] | None, server: ServerOptimizer, sum_across):
        self.keys = keys            # the exchanged state keys (None: every floating one)
        self.server = server
        self.sum_across = sum_across
        self.rounds: list[dict] = []  # per round: bytes (and adaptive weights)

    def new_sum(self, global_state: dict) -> WeightedSum:
        return WeightedSum(global_state, self.keys)

    def weight(self, model, silo_size: int, silo_id: int) -> float:
        return float(silo_size)

    def add(self, total: WeightedSum, model, weight: float) -> None:
        total.add(model.state_dict(), weight)

    def apply(self, model, global_state: dict, averaged: dict, round_idx: int) -> None:
        """global_state updated in place from the round's average (and `model` left holding it)."""
        global_state.update(self.server.step(global_state, averaged))
        model.load_state_dict(global_state)

    def round_bytes(self, global_state: dict, silos: int) -> RoundBytes:
        keys = averaged_keys(global_state, self.keys)
        size = state_nbytes(global_state, keys)
        return RoundBytes(silos, size, size)

    def end_round(self, global_state: dict, silos: int, weights: dict[int, float]) -> None:
        self.rounds.append({"round": len(self.rounds) + 1, **self.round_bytes(global_state, silos).record()})


class AdaptiveAggregation(Aggregation):
    """`adaptive` (Fed-MedLoRA+): silo k weighted by exp(1 - its validation loss), normalised."""
    name = "adaptive"

    def __init__(self, keys, server, sum_across, score, n_clients: int):
        super().__init__(keys, server, sum_across)
        self.score = score            # model -> validation loss on the server's held-out split
        self.n_clients = n_clients

    def weight(self, model, silo_size: int, silo_id: int) -> float:
        return adaptive_weight(self.score(model))

    def end_round(self, global_state: dict, silos: int, weights: dict[int, float]) -> None:
        # every process's silos' raw weights, summed into one vector: the log names every silo's
        raw = torch.zeros(self.n_clients, dtype=torch.float64)
        for silo_id, weight in weights.items():
            raw[silo_id] = weight
        raw = self.sum_across(raw)
        total = float(raw.sum())
        normalised = {silo: round(float(raw[silo]) / total, 6) for silo in range(self.n_clients) if raw[silo] > 0}
        super().end_round(global_state, silos, weights)
        self.rounds[-1]["weights"] = normalised
        logger.info("round %d adaptive weights (silo: weight): %s", len(self.rounds), normalised)


def adaptive_weight(loss: float) -> float:
    """exp(1 - loss): unnormalised; a silo whose model does not score (NaN/inf) gets 0."""
    return math.exp(1.0 - loss) if math.isfinite(loss) else 0.0


def normalised_adaptive_weights(losses: list[float]) -> list[float]:
    raw = [adaptive_weight(loss) for loss in losses]
    return [value / sum(raw) for value in raw]


class ExactAggregation(Aggregation):
    """`exact`: the sample-weighted mean of the products B_k A_k, folded into the base; adapters restart."""
    name = "exact"

    def __init__(self, keys, server, sum_across, scaling: float, seed: int):
        super().__init__(keys, server, sum_across)
        self.scaling = scaling
        self.seed = seed

    def _head_keys(self, state: dict) -> list[str]:
        return [key for key in averaged_keys(state, self.keys) if not is_adapter_key(key)]

    def contribution(self, state: dict) -> dict:
        """What is averaged: each adapted module's B A (under its module name) and the head's tensors."""
        products = {prefix: adapter_product(state, prefix) for prefix in adapted_prefixes(state)}
        return {**products, **{key: state[key] for key in self._head_keys(state)}}

    def new_sum(self, global_state: dict) -> WeightedSum:
        return WeightedSum(self.contribution(global_state))

    def add(self, total: WeightedSum, model, weight: float) -> None:
        total.add(self.contribution(model.state_dict()), weight)

    def apply(self, model, global_state: dict, averaged: dict, round_idx: int) -> None:
        model.load_state_dict(global_state)
        prefixes = adapted_prefixes(global_state)
        fold_into_base(model, {prefix: averaged[prefix] for prefix in prefixes}, self.scaling,
                       derive_seed(self.seed, "lora restart", round_idx))
        model.load_state_dict({key: value for key, value in averaged.items() if key not in prefixes}, strict=False)
        global_state.update({key: value.detach().clone() for key, value in model.state_dict().items()})

    def round_bytes(self, global_state: dict, silos: int) -> RoundBytes:
        keys = averaged_keys(global_state, self.keys)
        adapters = state_nbytes(global_state, [key for key in keys if is_adapter_key(key)])
        head = state_nbytes(global_state, self._head_keys(global_state))
        return RoundBytes(silos, adapters + head, silos * adapters + head)


def validation_loss(model, batches) -> float:
    """Mean cross-entropy over every labelled token (token tasks) or example (sequence tasks) of `batches`."""
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in batches:
            logits = model(**{key: value for key, value in batch.items() if key != "labels"}).logits
            labels = batch["labels"]
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1),
                                                     ignore_index=IGNORE_INDEX, reduction="sum")
            total += float(loss)
            count += int((labels != IGNORE_INDEX).sum())
    return total / max(1, count)

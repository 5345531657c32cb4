"""The fine-tuning loop: AdamW, linear warm-up then linear decay, gradient clipping, prediction,
and early stopping on the dev split.

Seeds: the order of the examples and the dropout of epoch e of silo c (c = 0 when centralized) come
from (seed, c, e) alone, so a federated run with one silo and one round retraces the centralized run
step for step.
"""
from __future__ import annotations

import logging
import sys
from dataclasses import dataclass

import torch
from tqdm import tqdm

from fedbiobert.finetune.batching import eval_batches, num_batches, training_batches
from fedbiobert.constants import IGNORE_INDEX
from fedbiobert.optim import build_optimizer, learning_rate, set_learning_rate
from fedbiobert.seeding import derive_seed, seed_torch

logger = logging.getLogger(__name__)


@dataclass
class Hyper:
    lr: float
    batch_size: int = 32
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    eval_batch_size: int = 64
    group_by_length: int = 0  # batching.length_grouped: windows of this many batches sorted by length (0: off)


def show_progress() -> bool:
    return sys.stderr.isatty()


def finetune_optimizer(model: torch.nn.Module, hyper: Hyper) -> torch.optim.AdamW:
    """Pre-training's optimizer (optim.build_optimizer: no decay on biases and LayerNorm weights) with the
    BERT fine-tuning recipe's settings: AdamW's default betas and eps, the rate set each step by the schedule."""
    return build_optimizer(model.named_parameters(), hyper.weight_decay, lr=hyper.lr, betas=(0.9, 0.999), eps=1e-8)


class LinearSchedule:
    """Linear warm-up over warmup_ratio of the steps, then linear decay to 0."""

    def __init__(self, total_steps: int, hyper: Hyper):
        self.total_steps = total_steps
        self.warmup_steps = int(round(hyper.warmup_ratio * total_steps))
        self.peak_lr = hyper.lr

    def __call__(self, step: int) -> float:
        return learning_rate(step, self.total_steps, self.warmup_steps, self.peak_lr, 0.0, power=1.0)


def training_mode(model: torch.nn.Module) -> None:
    """model.train(), except that submodules with only frozen parameters (a probe's encoder) stay in
    eval mode: no dropout inside them, so the head trains on fixed features."""
    model.train()
    for module in model.modules():
        params = list(module.parameters())
        if params and not any(param.requires_grad for param in params):
            module.eval()


def train_epoch(model, batches, optimizer, schedule, first_step: int, max_grad_norm: float,
                desc: str = "") -> list[float]:
    """One pass over `batches`; returns the loss of every step."""
    training_mode(model)
    losses = []
    for offset, batch in enumerate(tqdm(batches, desc=desc, leave=False, disable=not show_progress())):
        set_learning_rate(optimizer, schedule(first_step + offset))
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm, foreach=True)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.detach())
    return [float(loss) for loss in losses]  # one sync at the end of the epoch, not one per step


def train_epochs(model, examples: list, hyper: Hyper, optimizer, schedule, epochs: range, seed: int,
                 silo_id: int, pad_id: int) -> list[float]:
    """Epochs `epochs` (global indices, for seeds and the schedule) of one silo's examples."""
    steps_per_epoch = num_batches(len(examples), hyper.batch_size)
    losses = []
    for epoch in epochs:
        seed_torch(seed, "dropout", silo_id, epoch)
        batches = training_batches(examples, hyper.batch_size, derive_seed(seed, "order", silo_id, epoch), pad_id,
                                   hyper.group_by_length)
        losses += train_epoch(model, batches, optimizer, schedule, epoch * steps_per_epoch, hyper.max_grad_norm,
                              desc=f"silo {silo_id} epoch {epoch + 1}")
    return losses


def train_centralized(model, examples: list, hyper: Hyper, epochs: int, seed: int, pad_id: int,
                      on_epoch_end=lambda epoch: False) -> list[float]:
    """Up to `epochs` epochs with one optimizer; stops when on_epoch_end(epoch) returns True."""
    optimizer = finetune_optimizer(model, hyper)
    schedule = LinearSchedule(epochs * num_batches(len(examples), hyper.batch_size), hyper)
    losses = []
    for epoch in range(epochs):
        losses += train_epochs(model, examples, hyper, optimizer, schedule, range(epoch, epoch + 1), seed, 0, pad_id)
        recent = losses[-10:]
        logger.info("epoch %d/%d: loss (last steps) %.4f", epoch + 1, epochs, sum(recent) / max(1, len(recent)))
        if on_epoch_end(epoch):
            break
    return losses


@torch.no_grad()
def predict(model, examples: list, hyper: Hyper, pad_id: int) -> list:
    """Per example: the predicted label id (sequence task) or the ids at its labelled positions (token task)."""
    model.eval()
    order, batches = eval_batches(examples, hyper.eval_batch_size, pad_id)
    flat = []
    for batch in batches:
        logits = model(**{key: value for key, value in batch.items() if key != "labels"}).logits
        best = logits.argmax(-1)
        if best.dim() == 1:
            flat.extend(best.tolist())
        else:
            flat.extend(row[labels != IGNORE_INDEX].tolist() for row, labels in zip(best, batch["labels"]))
    predictions = [None] * len(examples)
    for index, value in zip(order, flat):
        predictions[index] = value
    return predictions


class EarlyStopping:
    """Keeps the best weights by dev score; says stop after `patience` evaluations without a gain."""

    def __init__(self, patience: int):
        self.patience = patience
        self.best_score = float("-inf")
        self.best_state: dict[str, torch.Tensor] | None = None
        self.best_index = -1
        self.bad = 0

    def update(self, score: float, model: torch.nn.Module, index: int) -> bool:
        if score > self.best_score:
            self.best_score, self.best_index, self.bad = score, index, 0
            self.best_state = {key: value.detach().clone() for key, value in model.state_dict().items()}
        else:
            self.bad += 1
        return self.patience > 0 and self.bad >= self.patience

    def restore(self, model: torch.nn.Module) -> None:
        if self.best_state is not None:
            model.load_state_dict(self.best_state)

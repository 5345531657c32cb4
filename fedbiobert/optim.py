"""Optimizer and learning-rate schedule, as in the original FedBioBERT: AdamW with linear warm-up
then polynomial (power 2) decay to `--end_lr` (the schedule of HF's
`get_polynomial_decay_schedule_with_warmup`).

The schedule is a pure function of a global step index, so a client, its server and a resumed run
all agree on the learning rate of a step without sharing scheduler state. Optimizer state is local
to one round of one logical client (clients are stateless between rounds, as in FedAvg); the server
keeps one optimizer per round.
"""
from __future__ import annotations

from typing import Iterable

import torch


def learning_rate(step: int, total_steps: int, warmup_steps: int, peak_lr: float, end_lr: float,
                  power: float = 2.0) -> float:
    """Learning rate of 0-based optimizer step `step` of `total_steps`."""
    if warmup_steps > 0 and step < warmup_steps:
        return peak_lr * (step + 1) / warmup_steps
    if step >= total_steps:
        return end_lr
    remaining = 1.0 - (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return (peak_lr - end_lr) * remaining ** power + end_lr


class Schedule:
    """The run's schedule, bound to its total and warm-up step counts."""

    def __init__(self, total_steps: int, warmup_ratio: float, peak_lr: float, end_lr: float):
        self.total_steps = total_steps
        self.warmup_steps = int(round(warmup_ratio * total_steps))
        self.peak_lr = peak_lr
        self.end_lr = end_lr

    def __call__(self, step: int) -> float:
        return learning_rate(step, self.total_steps, self.warmup_steps, self.peak_lr, self.end_lr)


def build_optimizer(named_params: Iterable[tuple[str, torch.nn.Parameter]], weight_decay: float) -> torch.optim.AdamW:
    """AdamW without weight decay on biases and LayerNorm weights (the BERT recipe)."""
    decay, no_decay, seen = [], [], set()
    for name, param in named_params:
        if not param.requires_grad or id(param) in seen:  # tied weights appear once
            continue
        seen.add(id(param))
        exempt = name.endswith("bias") or "LayerNorm" in name or "layer_norm" in name
        (no_decay if exempt else decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=0.0, betas=(0.9, 0.98), eps=1e-6, foreach=True)  # fewer kernel launches


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr

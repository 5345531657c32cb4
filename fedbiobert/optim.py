"""Optimizer and learning-rate schedule, as in the original FedBioBERT: AdamW with linear warm-up
then polynomial (power 2) decay to `--end_lr` (the schedule of HF's
`get_polynomial_decay_schedule_with_warmup`).

The schedule is a pure function of a global step index, so a client, its server and a resumed run
all agree on the learning rate of a step without sharing scheduler state. Optimizer state is local
to one round of one silo (silos are stateless between rounds, as in FedAvg); the server
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
    """The run's schedule, bound to its total and warm-up step counts.

    Heads and body can run at different rates (a warm start, where the body knows something and the
    heads are new): the body (embeddings and encoder layers) is frozen for the first
    `head_warmup_steps` global steps, then runs at `body_lr_ratio` times the heads' rate. Frozen means
    a learning rate of 0: AdamW then neither moves nor decays it (its decay is lr x weight_decay).
    """

    def __init__(self, total_steps: int, warmup_ratio: float, peak_lr: float, end_lr: float,
                 head_warmup_steps: int = 0, body_lr_ratio: float = 1.0):
        self.total_steps = total_steps
        self.warmup_steps = int(round(warmup_ratio * total_steps))
        self.peak_lr = peak_lr
        self.end_lr = end_lr
        self.head_warmup_steps = head_warmup_steps
        self.body_lr_ratio = body_lr_ratio

    def __call__(self, step: int) -> float:
        return learning_rate(step, self.total_steps, self.warmup_steps, self.peak_lr, self.end_lr)

    def body_factor(self, step: int) -> float:
        """The body's learning rate over the heads' at 0-based step `step`."""
        return 0.0 if step < self.head_warmup_steps else self.body_lr_ratio


# Parameter names of the MLM heads (the final head of BERT / RoBERTa, the client's auxiliary head).
HEAD_NAME_PREFIXES = ("cls.", "lm_head.", "aux_head.")


def is_head_parameter(name: str) -> bool:
    return name.startswith(HEAD_NAME_PREFIXES) or any(f".{prefix}" in name for prefix in HEAD_NAME_PREFIXES)


# AdamW of pre-training (the original FedBioBERT's, RoBERTa's recipe); fine-tuning uses AdamW's defaults
PRETRAIN_BETAS, PRETRAIN_EPS = (0.9, 0.98), 1e-6


def build_optimizer(named_params: Iterable[tuple[str, torch.nn.Parameter]], weight_decay: float, lr: float = 0.0,
                    betas: tuple[float, float] = PRETRAIN_BETAS, eps: float = PRETRAIN_EPS) -> torch.optim.AdamW:
    """AdamW without weight decay on biases and LayerNorm weights (the BERT recipe), for pre-training and
    fine-tuning alike; each group is marked `head` (MLM-head parameters) or not (the body), for
    `set_learning_rate`'s body factor. A tied weight is listed once, under its first name: the auxiliary
    decoder IS the word embedding, a body parameter. `lr` is the rate until `set_learning_rate` sets one."""
    groups = {(decay, head): [] for decay in (True, False) for head in (True, False)}
    seen = set()
    for name, param in named_params:
        if not param.requires_grad or id(param) in seen:  # tied weights appear once
            continue
        seen.add(id(param))
        exempt = name.endswith("bias") or "LayerNorm" in name or "layer_norm" in name
        groups[(not exempt, is_head_parameter(name))].append(param)
    param_groups = [{"params": params, "weight_decay": weight_decay if decay else 0.0, "head": head}
                    for (decay, head), params in groups.items() if params]
    return torch.optim.AdamW(param_groups, lr=lr, betas=betas, eps=eps, foreach=True)  # foreach: fewer launches


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float, body_factor: float = 1.0) -> None:
    """Every group at `lr`, but the body's groups (`head` False) at lr x body_factor."""
    for group in optimizer.param_groups:
        group["lr"] = lr if group.get("head", True) else lr * body_factor

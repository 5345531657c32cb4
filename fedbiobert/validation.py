"""Validation of the joined model at each round end: the MLM loss over every masked position of a
fixed validation set, its standard error, and the loss per source file.

The validation set (`ValidationSet`) is built once per run: `--val_blocks` blocks drawn from the
held-out documents of every corpus file in proportion (data/partition.validation_sample), masked
with fixed seeds, so every round and every algorithm is measured on exactly the same positions.

The loss is a ratio, total loss over masked positions / number of masked positions. Its standard
error treats the blocks as the sampled units (positions within one block are not independent):

    L = sum_i s_i / sum_i n_i       s_i, n_i: summed loss and masked positions of block i (k blocks)
    SE(L) = sqrt(k / (k - 1) * sum_i (s_i - L n_i)^2) / sum_i n_i

(the linearised variance of a ratio estimator; Cochran, Sampling Techniques, 6.9).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from fedbiobert.data import validation_batches, validation_sample
from fedbiobert.model import gather_masked, masked_positions
from fedbiobert.precision import autocast

# A difference between two validation losses counts as real when it exceeds this many standard
# errors of the difference (about 95% two-sided).
SIGNIFICANCE_Z = 1.96


@dataclass
class ValidationResult:
    loss: float
    standard_error: float
    num_blocks: int
    num_positions: int
    loss_by_file: dict[str, float]

    @property
    def relative_standard_error(self) -> float:
        return self.standard_error / self.loss if self.loss else math.nan

    def as_dict(self) -> dict:
        return {"val_loss": self.loss, "val_loss_se": self.standard_error, "val_blocks": self.num_blocks,
                "val_positions": self.num_positions, "val_loss_by_file": self.loss_by_file}


class ValidationSet:
    """The fixed, masked validation batches of a run and the source file of each of their rows."""

    def __init__(self, corpus, val_indices: torch.Tensor, num_blocks: int | None, batch_size: int, masking,
                 seed: int):
        chosen = validation_sample(corpus, val_indices, num_blocks, seed)
        self.batches = validation_batches(corpus, chosen, batch_size, masking, seed=seed, max_batches=None)
        self.file_of_row = corpus.source[chosen]  # rows of the batches, in order
        self.files = list(corpus.files)

    def __len__(self) -> int:
        return len(self.file_of_row)

    @torch.no_grad()
    def evaluate(self, model, precision: str = "fp32") -> ValidationResult | None:
        """The model's validation loss (None without validation blocks), on the model's device, its
        forwards in the run's --precision (the loss itself in fp32)."""
        if not self.batches:
            return None
        model.eval()
        sums, counts = [], []
        for batch in self.batches:
            with autocast(precision, model):
                block_sum, block_count = block_losses(model, batch)
            sums.append(block_sum)
            counts.append(block_count)
        return summarise(torch.cat(sums), torch.cat(counts), self.file_of_row, self.files)


def block_losses(model, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row of the batch: the summed cross-entropy over its masked positions, and their number
    (float64, on the CPU). Logits are computed at the masked positions only; the cross-entropy
    takes them in fp32 whatever dtype an autocast forward gave them."""
    device = next(model.parameters()).device
    batch = batch.to(device)
    base = getattr(model, model.base_model_prefix)
    hidden = base(input_ids=batch.input_ids, attention_mask=batch.attention_mask).last_hidden_state
    positions = masked_positions(batch.labels)
    logits = mlm_head(model)(gather_masked(hidden, positions)).float()
    losses = torch.nn.functional.cross_entropy(logits, batch.labels.reshape(-1)[positions], reduction="none")
    rows = torch.div(positions, batch.labels.shape[1], rounding_mode="floor")
    num_rows = batch.labels.shape[0]
    block_sum = torch.zeros(num_rows, dtype=torch.float64, device=device).index_add_(0, rows, losses.double())
    block_count = torch.bincount(rows, minlength=num_rows).double()
    return block_sum.cpu(), block_count.cpu()


def summarise(block_sum: torch.Tensor, block_count: torch.Tensor, file_of_row: torch.Tensor,
              files: list[str]) -> ValidationResult:
    """Loss, standard error (see the module docstring) and per-file loss from per-block sums."""
    total = float(block_count.sum())
    loss = float(block_sum.sum()) / total
    num_blocks = len(block_sum)
    if num_blocks > 1:
        residual = block_sum - loss * block_count
        standard_error = math.sqrt(num_blocks / (num_blocks - 1) * float((residual ** 2).sum())) / total
    else:
        standard_error = math.nan
    by_file = {}
    for file_index in sorted(set(file_of_row.tolist())):
        rows = file_of_row == file_index
        if float(block_count[rows].sum()) > 0:
            by_file[files[file_index]] = float(block_sum[rows].sum()) / float(block_count[rows].sum())
    return ValidationResult(loss, standard_error, num_blocks, int(total), by_file)


def differs(loss_a: float, se_a: float, loss_b: float, se_b: float) -> bool:
    """Whether two validation losses (on the same set) differ by more than noise: |a - b| larger
    than SIGNIFICANCE_Z standard errors of the difference (taken as independent: conservative, the
    same positions make the real difference's error smaller)."""
    return abs(loss_a - loss_b) > SIGNIFICANCE_Z * math.hypot(se_a, se_b)


def mlm_head(model):
    return model.cls if hasattr(model, "cls") else model.lm_head

"""What a client process's silos send and get back in the round's model exchange (FedAvg of the
client parts; the whole model in fedavg).

Pairing, per round, in a real deployment (the emulation: roles/client.py):

    silo k (for each sampled silo)                   aggregator
    upload encode(delta_k + residual_k)   -->        decode, average in fp32 (weighted as FedAvg),
                                                     server optimiser step (server_optimizer.py)
    apply decode(...)                     <--        download encode(new - round start + residual)

Here every client process plays the aggregator for its own silos and the processes sum their
decoded, weighted updates with one all-reduce: what each silo would put on its link is encoded for
real (codec.py), decoded, and only what survived the encoding is averaged; the byte counts are the
encoded sizes. The download's encoding is computed identically on every client process (same
all-reduced input, same residual), so all of them apply the same global part.

With `--exchange_dtype fp32` nothing is encoded: the trained weights are averaged as they are (bit for
bit the exchange before encodings existed).

Memory: error feedback keeps one bf16 residual of the averaged part per silo hosted here (on the
CPU; in a deployment each silo keeps its own) plus one for the download: half a client part's fp32
size each (about 135 MB per silo at BERT-base, cut 6, tied).

Resume: the residuals are training state, so they are written beside the checkpoint every round,
by the process that holds them (`ResidualFiles`: checkpoint/exchange/silo{id}.round{k}.pt, and
aggregate.round{k}.pt from the first client process), and a resume from round R (--from_checkpoint,
--from_checkpoint_round) loads each one's newest file of a round <= R: a resumed run continues bit for
bit. They are pruned with the round checkpoints (--keep_exports). Missing files (removed by hand, or a
checkpoint older than them) start the residuals at zero, with a warning.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from fedbiobert.atomic import atomic_write
from fedbiobert.codec import ErrorFeedbackSender, changed_row_share, state_delta

logger = logging.getLogger(__name__)

StateDict = dict[str, torch.Tensor]
WORD_EMBEDDINGS_MARKER = "word_embeddings.weight"


@dataclass
class Transfer:
    """One transfer of the exchange: what the receiver ends up with, its encoded size, and what the
    encoding lost of it (||lost|| / ||sent before encoding||; None for fp32)."""
    state: StateDict
    nbytes: int
    relative_error: float | None = None
    changed_row_share: float | None = None


class ModelExchange:
    def __init__(self, dtype: str, error_feedback: bool, keys: list[str], template: StateDict):
        self.dtype = dtype
        self.error_feedback = error_feedback
        self.keys = list(keys)
        self.fp32_bytes = sum(template[key].numel() * 4 for key in self.keys)
        self.embedding_keys = [key for key in self.keys if key.endswith(WORD_EMBEDDINGS_MARKER)]
        self.uplinks: dict[int, ErrorFeedbackSender] = {}  # silo_id -> its encoder and residual
        self.downlink = ErrorFeedbackSender(dtype, error_feedback)

    @property
    def lossless(self) -> bool:
        return self.dtype == "fp32"

    def upload(self, silo_id: int, trained: StateDict, round_start: StateDict) -> Transfer:
        """What silo `silo_id` sends of its trained part: the state the aggregator averages in its place."""
        if self.lossless:
            return Transfer({key: trained[key] for key in self.keys}, self.fp32_bytes)
        delta = state_delta(trained, round_start, self.keys)
        changed = changed_row_share(delta, self.embedding_keys)  # before send() overwrites the delta
        sent = self._uplink(silo_id).send(delta)
        return Transfer(_added(round_start, sent.delta), sent.nbytes, sent.relative_error, changed)

    @property
    def keeps_residuals(self) -> bool:
        return self.error_feedback and not self.lossless

    def save_residuals(self, files: ResidualFiles, round_number: int, silo_ids, aggregator: bool) -> None:
        """Write the residuals of the silos that sent this round (and the download's, by one process)."""
        if not self.keeps_residuals:
            return
        for silo_id in silo_ids:
            if silo_id in self.uplinks:
                files.save(f"silo{silo_id}", round_number, self.uplinks[silo_id].residual)
        if aggregator:
            files.save("aggregate", round_number, self.downlink.residual)

    def load_residuals(self, files: ResidualFiles, round_number: int | None, silo_ids, aggregator: bool) -> None:
        """A resume from round `round_number`: every residual this process holds, as it was then. A fresh
        run (None) starts from zero and removes what an earlier attempt of round 1 may have left."""
        if not self.keeps_residuals:
            return
        if round_number is None:
            for name in [f"silo{silo_id}" for silo_id in silo_ids] + (["aggregate"] if aggregator else []):
                files.forget(name)
            return
        for silo_id in silo_ids:  # a silo never sampled yet has no file: its residual is zero
            self._uplink(silo_id).residual = files.load(f"silo{silo_id}", round_number) or {}
        self.downlink.residual = files.load("aggregate", round_number) or {}
        if not self.downlink.residual:  # written every round: missing means removed, or an older checkpoint
            logger.warning("no error-feedback residuals of round %d or before in %s: they start at zero",
                           round_number, files.folder)

    def _uplink(self, silo_id: int) -> ErrorFeedbackSender:
        return self.uplinks.setdefault(silo_id, ErrorFeedbackSender(self.dtype, self.error_feedback))

    def download(self, round_start: StateDict, new_global: StateDict) -> Transfer:
        """What every silo receives of the aggregator's new global part (the same on every process)."""
        if self.lossless:
            return Transfer(new_global, self.fp32_bytes)
        sent = self.downlink.send(state_delta(new_global, round_start, self.keys))
        return Transfer(_added(round_start, sent.delta), sent.nbytes, sent.relative_error)


class ResidualFiles:
    """Error-feedback residuals on disk beside the checkpoint: NAME.round{k}.pt, kept as long as the round
    checkpoints they belong to (--keep_exports): every round's, by default."""

    def __init__(self, folder: str | Path, keep_rounds: int | None = None):
        self.folder = Path(folder)
        self.keep_rounds = keep_rounds

    def save(self, name: str, round_number: int, residual: StateDict) -> None:
        with atomic_write(self.folder / f"{name}.round{round_number}.pt", "wb", durable=True, parents=True) as out:
            torch.save(residual, out)
        if self.keep_rounds is not None:
            self._prune(name, oldest_kept=round_number - self.keep_rounds + 1)

    def _prune(self, name: str, oldest_kept: int) -> None:
        """Delete what no kept checkpoint resumes from: files older than NAME's newest of a round <=
        the oldest checkpoint kept (that one is the residual a resume from it loads)."""
        usable = [number for number in self._rounds(name) if number <= oldest_kept]
        for stale in usable[:-1]:
            (self.folder / f"{name}.round{stale}.pt").unlink(missing_ok=True)

    def forget(self, name: str) -> None:
        """A fresh run: no file of an earlier attempt in this folder (a failed first round) may be loaded later."""
        for number in self._rounds(name):
            (self.folder / f"{name}.round{number}.pt").unlink(missing_ok=True)

    def load(self, name: str, round_number: int) -> StateDict | None:
        """NAME's newest residual of a round <= round_number, or None."""
        usable = [number for number in self._rounds(name) if number <= round_number]
        if not usable:
            return None
        return torch.load(self.folder / f"{name}.round{usable[-1]}.pt", map_location="cpu", weights_only=True)

    def _rounds(self, name: str) -> list[int]:
        pattern = re.compile(rf"{re.escape(name)}\.round(\d+)\.pt")
        found = (pattern.fullmatch(path.name) for path in self.folder.glob(f"{name}.round*.pt"))
        return sorted(int(match.group(1)) for match in found if match)


def _added(round_start: StateDict, delta: StateDict) -> StateDict:
    """round_start + delta in round_start's dtypes, added into `delta` (a decoded copy this module owns)."""
    return {key: value.add_(round_start[key]).to(round_start[key].dtype) for key, value in delta.items()}

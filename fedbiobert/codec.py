"""What a silo puts on the wire for the round's model exchange: its change since the round started,
encoded (`--exchange_dtype`), with error feedback (`--exchange_error_feedback`).

Why deltas: a round moves a weight by a small fraction of its value, so the change survives a
narrow encoding where the weight itself would not (bf16 keeps 8 bits of mantissa: a delta of 1e-4
on a weight of 0.05 is below its resolution, but is kept to 3 significant digits on its own).

Encodings, per tensor (a matrix row by row; a vector, or any other tensor, as rows of its first dim):

    fp32   the delta as it is (4 bytes an element)
    bf16   delta.bfloat16()                                          (2 bytes an element)
    fp16   per row: scale = max|row| (fp32), payload (row / scale).half()   (2 bytes + 4 a row)
    int8   per row: scale = max|row| / 127 (fp32), payload round(row / scale) in [-127, 127]
           (1 byte + 4 a row; the error of an element is at most scale / 2)

The receiver decodes to fp32 and averages there (fedbiobert/aggregate.py). Byte counts are the
encoded tensors' own sizes (`Encoded.nbytes`): what a silo would put on its link.

Error feedback (Seide et al. 2014; Karimireddy et al. 2019, "EF-SGD"): what an encoding lost is
carried to the sender's next round, `corrected = delta + residual; sent = decode(encode(corrected));
residual = corrected - sent`, so the losses do not accumulate: over many rounds the sum of what was
sent differs from the sum of the true deltas by one residual only.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from fedbiobert.constants import EXCHANGE_DTYPES

StateDict = dict[str, torch.Tensor]
INT8_LEVELS = 127


@dataclass
class EncodedTensor:
    payload: torch.Tensor
    scale: torch.Tensor | None  # per row (fp16, int8), None for fp32 and bf16
    shape: torch.Size

    @property
    def nbytes(self) -> int:
        scale_bytes = 0 if self.scale is None else self.scale.numel() * self.scale.element_size()
        return self.payload.numel() * self.payload.element_size() + scale_bytes


@dataclass
class Encoded:
    dtype: str
    tensors: dict[str, EncodedTensor]

    @property
    def nbytes(self) -> int:
        return sum(tensor.nbytes for tensor in self.tensors.values())


def _rows(tensor: torch.Tensor) -> torch.Tensor:
    """A view as [rows, columns]: a vector is one row, a matrix its own rows, higher dims flattened."""
    tensor = tensor.float()
    return tensor.reshape(1, -1) if tensor.dim() <= 1 else tensor.reshape(tensor.shape[0], -1)


def _row_scale(rows: torch.Tensor, levels: float) -> torch.Tensor:
    """max|row| / levels per row; 1 for an all-zero row (its payload is 0 whatever the scale)."""
    scale = rows.abs().amax(dim=1, keepdim=True) / levels
    return torch.where(scale > 0, scale, torch.ones_like(scale))


def encode_tensor(tensor: torch.Tensor, dtype: str) -> EncodedTensor:
    if dtype == "fp32":
        return EncodedTensor(tensor.detach().float().clone(), None, tensor.shape)
    if dtype == "bf16":
        return EncodedTensor(tensor.detach().to(torch.bfloat16), None, tensor.shape)
    rows = _rows(tensor.detach())
    if dtype == "fp16":
        scale = _row_scale(rows, 1.0)
        return EncodedTensor((rows / scale).half(), scale, tensor.shape)
    if dtype == "int8":
        scale = _row_scale(rows, INT8_LEVELS)
        payload = torch.round(rows / scale).clamp_(-INT8_LEVELS, INT8_LEVELS).to(torch.int8)
        return EncodedTensor(payload, scale, tensor.shape)
    raise ValueError(f"exchange dtype {dtype!r} is not supported; accepted: {', '.join(EXCHANGE_DTYPES)}")


def decode_tensor(encoded: EncodedTensor) -> torch.Tensor:
    values = encoded.payload.float()
    if encoded.scale is not None:
        values = values * encoded.scale
    return values.reshape(encoded.shape)


def encode(delta: StateDict, dtype: str) -> Encoded:
    return Encoded(dtype, {key: encode_tensor(value, dtype) for key, value in delta.items()})


def decode(encoded: Encoded) -> StateDict:
    return {key: decode_tensor(tensor) for key, tensor in encoded.tensors.items()}


def state_delta(new: StateDict, old: StateDict, keys) -> StateDict:
    """new - old in fp32, for the given keys."""
    return {key: new[key].detach().float().cpu() - old[key].float() for key in keys}


@dataclass
class SentDelta:
    """What one encoded transfer delivered, and what it cost and lost."""
    delta: StateDict         # the decoded delta (what the receiver applies)
    nbytes: int              # the encoded payload's size
    relative_error: float    # ||sent - corrected|| / ||corrected|| (0 for fp32)


class ErrorFeedbackSender:
    """One sender's encoder with its residual (one per silo uplink, one for the aggregator's downlink).

    The residual is kept in bf16: half the memory and checkpoint bytes of fp32, and its own rounding
    (at most 2^-9 of a residual that is itself at most half an encoding step) is far below what the
    encoding loses."""

    RESIDUAL_DTYPE = torch.bfloat16

    def __init__(self, dtype: str, error_feedback: bool):
        self.dtype = dtype
        self.error_feedback = error_feedback and dtype != "fp32"
        self.residual: StateDict = {}

    def send(self, delta: StateDict) -> SentDelta:
        """Encode `delta` (plus the residual), which this call consumes: it is overwritten in place with
        what was lost (a BERT-base client part is 270 MB in fp32; no needless copy of it is made)."""
        for key, residual in self.residual.items():
            delta[key].add_(residual.float())
        corrected_norm = _sum_of_squares(delta)
        sent = decode(encoded := encode(delta, self.dtype))
        for key, value in delta.items():
            value.sub_(sent[key])  # now what the encoding lost
        if self.error_feedback:
            self.residual = {key: value.to(self.RESIDUAL_DTYPE) for key, value in delta.items()}
        lost_norm = _sum_of_squares(delta)
        return SentDelta(sent, encoded.nbytes, (lost_norm / corrected_norm) ** 0.5 if corrected_norm > 0 else 0.0)


def _sum_of_squares(state: StateDict) -> float:
    return sum(float(torch.linalg.vector_norm(value, dtype=torch.float64)) ** 2 for value in state.values())


def changed_row_share(delta: StateDict, keys) -> float | None:
    """Share of the rows of the given matrices that changed at all this round (what sending only the
    changed rows would save), or None when none of `keys` is a matrix in `delta`."""
    changed = total = 0
    for key in keys:
        value = delta.get(key)
        if value is None or value.dim() != 2:
            continue
        changed += int((value != 0).any(dim=1).sum())
        total += value.shape[0]
    return changed / total if total else None

"""The wire format: a fixed-size int64 header followed by up to MAX_TENSORS payload tensors.

The header says what follows (kind, client, round, step, two float scalars, and each tensor's
dtype and shape), so a receiver can allocate buffers before the payload arrives and a server can
take headers from any client before it knows the payload's size.

Header layout (int64 slots):
    0 magic  1 kind  2 silo_id  3 round  4 step  5 control  6 scalar0 (f64 bits)  7 scalar1
    8 deliver_at (f64 bits: emulated-link delivery time, 0 = now)  9 num_tensors
    10.. per tensor: dtype code, ndim, MAX_DIMS dims
"""
from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field
from enum import IntEnum

import torch

MAGIC = 0xFEDB10
MAX_TENSORS = 4
MAX_DIMS = 4
_FIXED_SLOTS = 10
_SLOTS_PER_TENSOR = 2 + MAX_DIMS
HEADER_LEN = _FIXED_SLOTS + MAX_TENSORS * _SLOTS_PER_TENSOR
HEADER_BYTES = HEADER_LEN * 8

_DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.int32, torch.uint8,
           torch.bool, torch.float64]
_DTYPE_CODE = {dtype: code for code, dtype in enumerate(_DTYPES)}


class Kind(IntEnum):
    ACTIVATION = 1  # client -> server: hidden states at the cut (+ what the server needs to use them)
    OUTPUT = 2      # server -> client: server-side hidden states at masked positions (client-head mode)
    # GRAD: gradient of the final loss w.r.t. OUTPUT (client -> server), or w.r.t. the
    # ACTIVATION (server -> client, fedbert only)
    GRAD = 3
    STATE = 4       # model weights
    CONTROL = 5     # round boundaries and termination


class Control(IntEnum):
    NONE = 0
    ROUND_DONE = 1  # client process -> its server: no more messages from me this round
    ABANDON = 2     # client -> server: the silo failed; drop the batch of this step awaiting its GRAD
    # A server that takes turns (fedbert --server_schedule sequential) -> its client processes:
    TURN = 3        # your turn this round starts now: train your silos
    WAITING = 4     # still serving another process; I am alive (sent while you wait for TURN)


@dataclass
class Message:
    kind: Kind
    silo_id: int = -1
    round: int = -1
    step: int = -1
    control: Control = Control.NONE
    scalars: tuple[float, float] = (math.nan, math.nan)
    tensors: list[torch.Tensor] = field(default_factory=list)
    deliver_at: float = 0.0  # set by an emulated link: the receiver holds the message until then
    source: int = -1  # filled in by the receiver

    @property
    def payload_bytes(self) -> int:
        return sum(tensor.numel() * tensor.element_size() for tensor in self.tensors)


def _float_bits(value: float) -> int:
    return struct.unpack("<q", struct.pack("<d", float(value)))[0]


def _bits_float(bits: int) -> float:
    return struct.unpack("<d", struct.pack("<q", int(bits)))[0]


def encode_header(message: Message) -> torch.Tensor:
    if len(message.tensors) > MAX_TENSORS:
        raise ValueError(f"a message carries at most {MAX_TENSORS} tensors, got {len(message.tensors)}")
    slots = [MAGIC, int(message.kind), message.silo_id, message.round, message.step,
             int(message.control), _float_bits(message.scalars[0]), _float_bits(message.scalars[1]),
             _float_bits(message.deliver_at), len(message.tensors)]
    for tensor in message.tensors:
        if tensor.dim() > MAX_DIMS:
            raise ValueError(f"a tensor on the wire has at most {MAX_DIMS} dims, got shape {tuple(tensor.shape)}")
        dims = list(tensor.shape) + [0] * (MAX_DIMS - tensor.dim())
        slots += [_DTYPE_CODE[tensor.dtype], tensor.dim()] + dims
    slots += [0] * (HEADER_LEN - len(slots))
    return torch.tensor(slots, dtype=torch.int64)


def decode_header(header: torch.Tensor) -> tuple[Message, list[tuple[torch.dtype, tuple[int, ...]]]]:
    """Header tensor -> (message without tensors, [(dtype, shape)] of the payload to receive)."""
    slots = header.tolist()
    if slots[0] != MAGIC:
        raise ValueError(f"not a FedBioBERT message header (magic {slots[0]:#x})")
    message = Message(kind=Kind(slots[1]), silo_id=slots[2], round=slots[3], step=slots[4],
                      control=Control(slots[5]), scalars=(_bits_float(slots[6]), _bits_float(slots[7])),
                      deliver_at=_bits_float(slots[8]))
    specs = []
    for index in range(slots[9]):
        base = _FIXED_SLOTS + index * _SLOTS_PER_TENSOR
        ndim = slots[base + 1]
        specs.append((_DTYPES[slots[base]], tuple(slots[base + 2: base + 2 + ndim])))
    return message, specs

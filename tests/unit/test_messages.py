"""The wire header round-trips every field; bad headers are refused."""
import math

import pytest
import torch

from fedbiobert.comm.messages import HEADER_BYTES, Control, Kind, Message, decode_header, encode_header


def test_header_round_trip():
    tensors = [torch.zeros(2, 3, 4, dtype=torch.bfloat16), torch.zeros(7, dtype=torch.int64),
               torch.zeros(2, 3, dtype=torch.uint8)]
    message = Message(Kind.ACTIVATION, silo_id=5, round=2, step=41, control=Control.NONE,
                      scalars=(1.25, math.nan), tensors=tensors)
    header = encode_header(message)
    assert header.numel() * 8 == HEADER_BYTES
    decoded, specs = decode_header(header)
    assert (decoded.kind, decoded.silo_id, decoded.round, decoded.step) == (Kind.ACTIVATION, 5, 2, 41)
    assert decoded.scalars[0] == 1.25 and math.isnan(decoded.scalars[1])
    assert specs == [(torch.bfloat16, (2, 3, 4)), (torch.int64, (7,)), (torch.uint8, (2, 3))]
    assert message.payload_bytes == 2 * 3 * 4 * 2 + 7 * 8 + 6


def test_control_message_has_no_payload():
    decoded, specs = decode_header(encode_header(Message(Kind.CONTROL, round=3, control=Control.ROUND_DONE)))
    assert decoded.control is Control.ROUND_DONE and specs == []


def test_garbage_header_is_refused():
    with pytest.raises(ValueError, match="not a FedBioBERT message header"):
        decode_header(torch.zeros(HEADER_BYTES // 8, dtype=torch.int64))


def test_too_many_tensors_are_refused():
    with pytest.raises(ValueError, match="at most"):
        encode_header(Message(Kind.STATE, tensors=[torch.zeros(1)] * 5))

"""Tests of fedbiobert.model.mlm: masked-position selection and the masked-only MLM loss."""

import math

import pytest
import torch
from torch.testing import assert_close

from fedbiobert.model import (
    ModelSpec,
    build_full_model,
    full_mlm_loss,
    gather_masked,
    masked_positions,
    masked_targets,
    mlm_loss,
    split_model,
)


def test_masked_positions_are_flat_row_major_indices():
    labels = torch.tensor([[-100, 5, -100], [7, -100, 9]])
    assert masked_positions(labels).tolist() == [1, 3, 5]
    assert masked_targets(labels, masked_positions(labels)).tolist() == [5, 7, 9]


def test_gather_masked_picks_those_rows():
    hidden = torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(2, 3, 4)
    assert_close(gather_masked(hidden, torch.tensor([1, 5])), torch.stack([hidden[0, 1], hidden[1, 2]]))


def test_mlm_loss_matches_a_hand_computed_value():
    # row 1: uniform over 3 tokens -> -log(1/3); row 2: target has e^{ln 3} = 3 of 1 + 3 + 1 -> -log(3/5)
    logits = torch.tensor([[0.0, 0.0, 0.0], [0.0, math.log(3.0), 0.0]])
    loss = mlm_loss(logits, torch.tensor([0, 1]))
    assert loss.item() == pytest.approx((math.log(3.0) - math.log(3.0 / 5.0)) / 2)  # = ln(5) / 2


def test_mlm_loss_equals_cross_entropy_with_ignore_index_everywhere_else():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 11, generator=generator)
    labels = torch.full((2, 5), -100)
    labels[0, 1], labels[1, 4] = 3, 10
    positions = masked_positions(labels)
    expected = torch.nn.CrossEntropyLoss()(logits.reshape(-1, 11), labels.reshape(-1))
    actual = mlm_loss(gather_masked(logits, positions), masked_targets(labels, positions))
    assert_close(actual, expected)


@pytest.mark.parametrize("arch,pad", [("bert", 0), ("roberta", 1)])
def test_split_masked_only_loss_equals_hf_full_loss(arch, pad):
    spec = ModelSpec(arch=arch, vocab_size=100, hidden_size=32, num_attention_heads=2, intermediate_size=64,
                     num_layers=4, max_len=16, pad_token_id=pad)
    reference, full = build_full_model(spec, seed=5).eval(), build_full_model(spec, seed=5).eval()
    input_ids = torch.randint(3, 100, (2, 16), generator=torch.Generator().manual_seed(1))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 12:], input_ids[1, 12:] = 0, pad
    labels = torch.full_like(input_ids, -100)
    labels[0, 3], labels[1, 5], labels[1, 11] = input_ids[0, 3], 42, input_ids[1, 11]
    client, server = split_model(full, 2, "server")
    positions = masked_positions(labels)
    hidden = server(client(input_ids, attention_mask), attention_mask)
    logits = server.final_logits(gather_masked(hidden, positions))
    split_loss = mlm_loss(logits, masked_targets(labels, positions))
    with torch.no_grad():
        assert_close(split_loss, full_mlm_loss(reference, input_ids, attention_mask, labels))


def test_mlm_loss_without_masked_positions_is_zero_and_differentiable():
    logits = torch.zeros(0, 7, requires_grad=True)
    loss = mlm_loss(logits, torch.zeros(0, dtype=torch.long))
    loss.backward()
    assert loss.item() == 0.0 and logits.grad is not None


@pytest.mark.parametrize("call,message", [
    (lambda: masked_positions(torch.zeros(4)), "labels shape"),
    (lambda: gather_masked(torch.zeros(4, 2), torch.tensor([0])), "hidden shape"),
    (lambda: mlm_loss(torch.zeros(2, 3), torch.zeros(3, dtype=torch.long)), "logits/target shapes"),
])
def test_bad_shapes_raise_value_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()

"""Tests of fedbiobert.data.masking on hand-built tensors: which positions get labels, the
80/10/10 split, determinism, never touching special/pad tokens, and spec validation."""

import pytest
import torch

from fedbiobert.data.masking import IGNORE_INDEX, MaskingSpec, mask_tokens
from fedbiobert.data.tokenizer import build_tokenizer
from tests.conftest import SCIVOCAB

PAD, CLS, SEP, MASK, UNK = 0, 1, 2, 3, 4
VOCAB = 50
SPEC = MaskingSpec(mask_token_id=MASK, vocab_size=VOCAB, special_token_ids=(PAD, CLS, SEP, MASK, UNK))


def make_blocks(rows: int, length: int, seed: int = 0) -> torch.Tensor:
    """[CLS] ordinary ids [SEP] followed by padding in every other row."""
    generator = torch.Generator().manual_seed(seed)
    blocks = torch.randint(5, VOCAB, (rows, length), generator=generator)
    blocks[:, 0] = CLS
    blocks[:, -1] = SEP
    blocks[::2, length - length // 4:] = PAD
    blocks[::2, length - length // 4 - 1] = SEP
    return blocks


def test_labels_only_where_chosen_and_equal_to_the_original():
    blocks = make_blocks(64, 128)
    original = blocks.clone()
    inputs, labels = mask_tokens(blocks, SPEC, torch.Generator().manual_seed(1))
    assert torch.equal(blocks, original)  # not modified in place
    chosen = labels != IGNORE_INDEX
    assert torch.equal(labels[chosen], original[chosen])
    assert torch.equal(inputs[~chosen], original[~chosen])  # every unlabelled position is unchanged
    special = torch.isin(original, torch.tensor(SPEC.special_token_ids))
    assert not chosen[special].any()
    assert torch.equal(inputs[special], original[special])  # special/pad never replaced
    assert chosen.any() and (labels[special] == IGNORE_INDEX).all()


def test_proportions_are_15_percent_then_80_10_10():
    blocks = make_blocks(256, 512)
    inputs, labels = mask_tokens(blocks, SPEC, torch.Generator().manual_seed(7))
    eligible = ~torch.isin(blocks, torch.tensor(SPEC.special_token_ids))
    chosen = labels != IGNORE_INDEX
    assert abs(chosen.sum().item() / eligible.sum().item() - 0.15) < 0.005
    masked = (inputs == MASK) & chosen
    kept = (inputs == blocks) & chosen
    replaced = chosen & ~masked & ~kept
    total = chosen.sum().item()
    # A random replacement equals the original with chance 1/45 (45 ordinary ids), which
    # moves about 0.2% of the chosen positions from "replaced" to "kept".
    assert abs(masked.sum().item() / total - 0.80) < 0.01
    assert abs(replaced.sum().item() / total - 0.10 * 44 / 45) < 0.01
    assert abs(kept.sum().item() / total - (0.10 + 0.10 / 45)) < 0.01
    assert not torch.isin(inputs[replaced], torch.tensor(SPEC.special_token_ids)).any()
    assert inputs[replaced].unique().numel() == 45  # drawn from every ordinary id


def test_same_seed_same_result_and_other_seed_differs():
    blocks = make_blocks(8, 64)
    first = mask_tokens(blocks, SPEC, torch.Generator().manual_seed(3))
    second = mask_tokens(blocks, SPEC, torch.Generator().manual_seed(3))
    other = mask_tokens(blocks, SPEC, torch.Generator().manual_seed(4))
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    assert not torch.equal(first[1], other[1])


def test_at_least_one_position_is_forced():
    blocks = torch.tensor([[CLS, 17, SEP, PAD, PAD]])
    spec = MaskingSpec(MASK, VOCAB, SPEC.special_token_ids, mlm_probability=1e-9)
    inputs, labels = mask_tokens(blocks, spec, torch.Generator().manual_seed(0))
    assert labels.tolist() == [[IGNORE_INDEX, 17, IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX]]
    assert inputs[0, [0, 2, 3, 4]].tolist() == [CLS, SEP, PAD, PAD]


def test_only_special_tokens_is_rejected():
    with pytest.raises(ValueError, match="only special/pad tokens"):
        mask_tokens(torch.tensor([[CLS, SEP, PAD]]), SPEC, torch.Generator().manual_seed(0))


def test_wrong_input_shape_is_rejected():
    with pytest.raises(ValueError, match=r"input_ids has shape \(5,\)"):
        mask_tokens(torch.arange(5), SPEC, torch.Generator().manual_seed(0))


@pytest.mark.parametrize("kwargs, message", [
    ({"mlm_probability": 0.0}, "mlm_probability 0.0 is out of range"),
    ({"mlm_probability": 1.5}, "mlm_probability 1.5 is out of range"),
    ({"mask_token_id": 50}, "mask_token_id 50 is outside the vocab"),
    ({"vocab_size": 5}, "leave no ordinary token"),
])
def test_spec_validation(kwargs, message):
    fields = {"mask_token_id": MASK, "vocab_size": VOCAB, "special_token_ids": SPEC.special_token_ids}
    with pytest.raises(ValueError, match=message):
        MaskingSpec(**{**fields, **kwargs})


def test_spec_from_real_scivocab_tokenizer(tmp_path):
    tokenizer = build_tokenizer("bert", str(SCIVOCAB), [], tmp_path)
    lines = SCIVOCAB.read_text(encoding="utf-8").split("\n")
    spec = MaskingSpec.from_tokenizer(tokenizer, mlm_probability=0.2)
    assert spec.mask_token_id == lines.index("[MASK]")
    assert spec.vocab_size == 31090
    specials = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
    assert spec.special_token_ids == tuple(sorted(lines.index(token) for token in specials))
    assert spec.mlm_probability == 0.2

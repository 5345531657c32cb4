"""The fine-tuner's training batches (fedbiobert/finetune/batching.py): the plain seeded shuffle, and
--group_by_length's windows of batches sorted by length, on hand-made lengths."""
from dataclasses import dataclass

import pytest

from fedbiobert.finetune.batching import epoch_order, length_grouped, training_batches


@dataclass
class Example:
    input_ids: list
    labels: list


def _examples(lengths: list[int]) -> list[Example]:
    return [Example([index + 1] * length, [0] * length) for index, length in enumerate(lengths)]


def _rows(batches) -> list[list[int]]:
    """Each batch's examples, by their id (the token every example repeats is its index + 1)."""
    return [[int(row[0]) - 1 for row in batch["input_ids"]] for batch in batches]


def test_without_grouping_the_order_is_the_seeded_permutation():
    examples = _examples([3, 9, 1, 7, 5, 2, 8])
    for group in (0, 1):
        rows = _rows(training_batches(examples, 3, seed=5, pad_id=0, group_by_length=group))
        assert [index for row in rows for index in row] == epoch_order(7, 5)


def test_a_window_of_batches_is_sorted_by_length_then_its_batches_shuffled():
    lengths = [5, 1, 8, 3, 7, 2, 6, 4]  # distinct: the sort is unambiguous
    order = list(range(8))
    grouped = length_grouped(order, lengths, batch_size=2, group=2, seed=0)
    # windows [0..3] and [4..7], each sorted longest first: batches (2,0) (3,1) and (4,6) (7,5)
    batches = {tuple(grouped[start:start + 2]) for start in range(0, 8, 2)}
    assert batches == {(2, 0), (3, 1), (4, 6), (7, 5)}
    assert sorted(grouped) == order  # every example once


def test_grouping_pads_less_and_keeps_the_short_batch_last():
    lengths = [2, 30, 3, 28, 4, 29, 5, 31, 6]  # short and long alternate: a plain shuffle mixes them
    examples = _examples(lengths)
    plain = training_batches(examples, 2, seed=3, pad_id=0)
    grouped = training_batches(examples, 2, seed=3, pad_id=0, group_by_length=4)
    assert sum(batch["input_ids"].numel() for batch in grouped) < sum(batch["input_ids"].numel() for batch in plain)
    assert [len(row) for row in _rows(grouped)] == [2, 2, 2, 2, 1]
    assert sorted(index for row in _rows(grouped) for index in row) == list(range(9))


def test_grouping_is_seeded():
    examples = _examples(list(range(1, 41)))
    first, again = (_rows(training_batches(examples, 4, seed=7, pad_id=0, group_by_length=3)) for _ in range(2))
    other = _rows(training_batches(examples, 4, seed=8, pad_id=0, group_by_length=3))
    assert first == again and first != other


@pytest.mark.parametrize("value", ["-1"])
def test_a_negative_group_is_one_line(value, capsys):
    from fedbiobert.finetune.__main__ import main
    with pytest.raises(SystemExit) as exit_info:
        main(["--data", "x", "--model", "y", "--group_by_length", value])
    assert exit_info.value.code != 0
    assert "--group_by_length -1" in capsys.readouterr().err

"""The validation measure on hand-computed cases: the loss over every masked position, its standard
error with blocks as the sampled units, the loss per source file, and the noise verdict."""
import math

import pytest
import torch

from fedbiobert.validation import differs, summarise


def test_loss_standard_error_and_per_file_loss_hand_computed():
    # three blocks: summed losses 6, 2, 12 over 3, 1, 4 masked positions; files a, a, b
    block_sum = torch.tensor([6.0, 2.0, 12.0], dtype=torch.float64)
    block_count = torch.tensor([3.0, 1.0, 4.0], dtype=torch.float64)
    result = summarise(block_sum, block_count, torch.tensor([0, 0, 1]), ["a.txt", "b.txt"])
    assert result.loss == pytest.approx(20 / 8)  # every masked position counts once, not a mean of means
    # residuals s_i - L n_i = 6 - 7.5, 2 - 2.5, 12 - 10 = -1.5, -0.5, 2; sum of squares 6.5
    assert result.standard_error == pytest.approx(math.sqrt(3 / 2 * 6.5) / 8)
    assert result.loss_by_file == {"a.txt": pytest.approx(8 / 4), "b.txt": pytest.approx(12 / 4)}
    assert (result.num_blocks, result.num_positions) == (3, 8)
    assert result.relative_standard_error == pytest.approx(result.standard_error / 2.5)


def test_one_block_has_no_standard_error_and_empty_files_are_left_out():
    result = summarise(torch.tensor([4.0], dtype=torch.float64), torch.tensor([2.0], dtype=torch.float64),
                       torch.tensor([1]), ["a.txt", "b.txt"])
    assert result.loss == 2.0 and math.isnan(result.standard_error) and result.loss_by_file == {"b.txt": 2.0}


def test_differs_is_beyond_1_96_standard_errors_of_the_difference():
    assert differs(7.0, 0.03, 7.1, 0.04)  # 0.1 > 1.96 x 0.05 = 0.098
    assert not differs(7.0, 0.03, 7.09, 0.04)

"""The attention experiment's statistics on distributions whose answers are known by hand."""
from __future__ import annotations

import math

import numpy as np
import pytest

from fedbiobert.experiments.attention_analysis import (head_entropy, head_js_matrix, js_divergence,
                                                       mean_abs_difference, ranks, row_entropy, same_head_js,
                                                       spearman)


def test_entropy_of_a_uniform_row_is_log_n_and_of_a_one_hot_row_zero():
    assert row_entropy(np.full(8, 1 / 8)) == pytest.approx(math.log(8))
    assert row_entropy(np.array([0.0, 1.0, 0.0])) == 0.0
    assert row_entropy(np.array([0.5, 0.5, 0.0, 0.0])) == pytest.approx(math.log(2))


def test_head_entropy_is_the_mean_over_queries():
    uniform = np.full((4, 4), 0.25)                    # every query spreads over 4 keys: ln 4
    one_hot = np.eye(4)                                # every query on one key: 0
    half = np.vstack([uniform[:2], one_hot[:2]])       # half of each
    attention = np.stack([uniform, one_hot, half])     # [heads, queries, keys]
    assert head_entropy(attention) == pytest.approx([math.log(4), 0.0, math.log(4) / 2])


def test_js_of_identical_distributions_is_zero_and_of_disjoint_ones_one_bit():
    p = np.array([0.1, 0.2, 0.3, 0.4])
    assert js_divergence(p, p) == pytest.approx(0.0, abs=1e-12)
    assert js_divergence(np.array([0.5, 0.5, 0, 0]), np.array([0, 0, 0.5, 0.5])) == pytest.approx(1.0)
    # disjoint supports of different sizes: m = (1/2, 1/4, 1/4), H(m) = 1.5 bits, (H(p) + H(q)) / 2 = 0.5
    p, q = np.array([1.0, 0.0, 0.0]), np.array([0.0, 0.5, 0.5])
    assert js_divergence(p, q) == pytest.approx(1.0)
    # overlapping: m = (3/4, 1/4); H(p) = 0, H(q) = 1 bit
    p, q = np.array([1.0, 0.0]), np.array([0.5, 0.5])
    m_entropy = -(0.75 * math.log2(0.75) + 0.25 * math.log2(0.25))
    assert js_divergence(p, q) == pytest.approx(m_entropy - 0.5)
    assert js_divergence(q, p) == pytest.approx(js_divergence(p, q))


def test_head_js_matrix_identical_heads_zero_disjoint_heads_one():
    left = np.tile([0.5, 0.5, 0.0, 0.0], (3, 1))   # every query attends to keys 0-1
    right = np.tile([0.0, 0.0, 0.5, 0.5], (3, 1))  # every query attends to keys 2-3
    matrix = head_js_matrix(np.stack([left, left, right]))
    assert matrix.shape == (3, 3)
    assert matrix[0, 1] == pytest.approx(0.0, abs=1e-12)
    assert matrix[0, 2] == pytest.approx(1.0) and matrix[1, 2] == pytest.approx(1.0)
    assert np.allclose(matrix, matrix.T) and np.all(np.diag(matrix) == 0)


def test_head_js_matrix_matches_the_direct_pairwise_mean():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(4, 5, 6))
    attention = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    direct = np.array([[js_divergence(attention[i], attention[j]).mean() for j in range(4)] for i in range(4)])
    np.fill_diagonal(direct, 0.0)
    assert np.allclose(head_js_matrix(attention), direct, atol=1e-12)


def test_same_head_js_compares_head_h_with_head_h():
    first = np.stack([np.tile([1.0, 0.0], (2, 1)), np.tile([0.5, 0.5], (2, 1))])
    second = np.stack([np.tile([0.0, 1.0], (2, 1)), np.tile([0.5, 0.5], (2, 1))])
    assert same_head_js(first, second) == pytest.approx([1.0, 0.0])
    with pytest.raises(ValueError):
        same_head_js(first, second[:1])


def test_spearman_of_known_rankings():
    assert spearman([1, 2, 3, 4, 5], [10, 20, 30, 40, 50]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4, 5], [5, 4, 3, 2, 1]) == pytest.approx(-1.0)
    # one swap of neighbours in 5: rho = 1 - 6 * 2 / (5 * 24) = 0.9
    assert spearman([1, 2, 3, 4, 5], [1, 3, 2, 4, 5]) == pytest.approx(0.9)
    # monotone but not linear: ranks equal
    assert spearman([0.1, 0.2, 0.3, 5.0], [1, 4, 9, 16]) == pytest.approx(1.0)
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))


def test_ties_share_their_average_rank():
    assert list(ranks([3.0, 1.0, 3.0, 2.0])) == [3.5, 1.0, 3.5, 2.0]
    # with ties, rho is Pearson's r of the average ranks: [1.5, 1.5, 3] against [1, 2, 3] -> sqrt(3)/2
    assert spearman([1, 1, 2], [1, 2, 3]) == pytest.approx(math.sqrt(3) / 2)


def test_mean_abs_difference_ignores_the_diagonal():
    a = np.array([[0.0, 0.2], [0.2, 0.0]])
    b = np.array([[9.0, 0.5], [0.5, 9.0]])
    assert mean_abs_difference(a, b) == pytest.approx(0.3)

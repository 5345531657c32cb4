"""Tests of fedbiobert.data.partition on small hand-built corpora with known block counts:
the validation split and sample, and the four client schemes (hand-checked assignments)."""
import numpy as np
import pytest
import torch

from fedbiobert.data.partition import silos_per_unit, partition, split_validation, validation_sample
from fedbiobert.data.token_cache import TokenizedCorpus


def fake_corpus(blocks_per_file: list[int], units: list[str] | None = None) -> TokenizedCorpus:
    """Blocks of file f come in one contiguous run; block i holds [CLS] i [SEP] pad."""
    total = sum(blocks_per_file)
    blocks = torch.zeros((total, 4), dtype=torch.int64)
    blocks[:, 0], blocks[:, 1], blocks[:, 2] = 1, torch.arange(total) + 5, 2
    source = torch.repeat_interleave(torch.arange(len(blocks_per_file)), torch.tensor(blocks_per_file))
    files = [f"f{index}.txt" for index in range(len(blocks_per_file))]
    return TokenizedCorpus(
        blocks=blocks, source=source, files=files, pad_token_id=0,
        unit=units if units is not None else [files[f] for f in source.tolist()],
    )


def all_blocks(corpus: TokenizedCorpus) -> torch.Tensor:
    return torch.arange(len(corpus))


def assert_exact_cover(parts: list[torch.Tensor], train_idx: torch.Tensor) -> None:
    joined = torch.cat(parts)
    assert len(joined) == len(train_idx) == len(set(joined.tolist()))  # disjoint
    assert set(joined.tolist()) == set(train_idx.tolist())  # union == train_idx
    assert all(len(part) > 0 for part in parts)


def test_split_validation_returns_the_held_out_blocks():
    corpus = fake_corpus([4, 3])
    corpus.held_out = torch.tensor([False, True, False, False, False, False, True])
    train_idx, val_idx = split_validation(corpus)
    assert val_idx.tolist() == [1, 6] and train_idx.tolist() == [0, 2, 3, 4, 5]
    corpus.held_out = None  # a corpus without validation documents
    assert len(split_validation(corpus)[1]) == 0


def test_validation_sample_draws_from_every_file_in_proportion():
    """The old set took the first N held-out blocks, i.e. the first file alphabetically only."""
    corpus = fake_corpus([100, 50, 30, 20])
    val_idx = torch.arange(len(corpus))
    sample = validation_sample(corpus, val_idx, num_blocks=20, seed=0)
    per_file = torch.bincount(corpus.source[sample], minlength=4).tolist()
    assert per_file == [10, 5, 3, 2]  # 20 x (100, 50, 30, 20) / 200
    assert sample.tolist() == sorted(set(sample.tolist()))
    assert torch.equal(validation_sample(corpus, val_idx, 20, seed=0), sample)
    assert not torch.equal(validation_sample(corpus, val_idx, 20, seed=1), sample)
    # fewer blocks than files with validation blocks: the largest files get them
    assert torch.bincount(corpus.source[validation_sample(corpus, val_idx, 2, 0)], minlength=4).tolist() == \
        [1, 1, 0, 0]
    # a small file still gets one block when the budget allows every file one
    tiny = fake_corpus([1000, 1])
    assert torch.bincount(tiny.source[validation_sample(tiny, torch.arange(1001), 10, 0)]).tolist() == [9, 1]
    assert torch.equal(validation_sample(corpus, val_idx, None, 0), val_idx)
    assert torch.equal(validation_sample(corpus, val_idx, 10_000, 0), val_idx)


def test_random_is_near_equal_disjoint_and_seeded():
    corpus = fake_corpus([20, 12])
    parts = partition(corpus, all_blocks(corpus), n_clients=5, scheme="random", seed=0)
    assert sorted(len(part) for part in parts) == [6, 6, 6, 7, 7]
    assert_exact_cover(parts, all_blocks(corpus))
    again = partition(corpus, all_blocks(corpus), n_clients=5, scheme="random", seed=0)
    assert all(torch.equal(a, b) for a, b in zip(parts, again))
    other = partition(corpus, all_blocks(corpus), n_clients=5, scheme="random", seed=1)
    assert not all(torch.equal(a, b) for a, b in zip(parts, other))


def test_by_file_four_clients_over_six_files_balances_greedily():
    corpus = fake_corpus([10, 8, 6, 4, 2, 2])
    parts = partition(corpus, all_blocks(corpus), n_clients=4, scheme="by_file", seed=0)
    # Largest first to the lightest client: f0->c0, f1->c1, f2->c2, f3->c3, f4->c3 (4 < 6),
    # f5->c2 (c2 and c3 tie at 6; the lower client wins).
    files_of = [sorted(set(corpus.source[part].tolist())) for part in parts]
    assert files_of == [[0], [1], [2, 5], [3, 4]]
    assert [len(part) for part in parts] == [10, 8, 8, 6]
    assert_exact_cover(parts, all_blocks(corpus))


def test_by_file_eight_clients_over_six_files_splits_large_files():
    corpus = fake_corpus([12, 9, 5, 3, 2, 1])
    parts = partition(corpus, all_blocks(corpus), n_clients=8, scheme="by_file", seed=0)
    # Quotas 8 * n / 32 = [3, 2.25, 1.25, .75, .5, .25] -> at least 1 each: [3, 2, 1, 1, 1, 1] = 9
    # seats; one too many, taken from the most over-served unit with > 1 seat (f0: 3 vs 3.0
    # beats f1: 2 vs 2.25) -> [2, 2, 1, 1, 1, 1].
    files_of = [sorted(set(corpus.source[part].tolist())) for part in parts]
    assert files_of == [[0], [0], [1], [1], [2], [3], [4], [5]]
    assert [len(part) for part in parts] == [6, 6, 5, 4, 5, 3, 2, 1]
    assert parts[0].tolist() == list(range(0, 6)) and parts[1].tolist() == list(range(6, 12))  # contiguous
    assert_exact_cover(parts, all_blocks(corpus))


def test_clients_per_unit_largest_remainder():
    assert silos_per_unit(np.array([7, 5]), 5).tolist() == [3, 2]  # quotas 2.92, 2.08
    assert silos_per_unit(np.array([6, 3, 4]), 5).tolist() == [2, 1, 2]  # 2.31, 1.15, 1.54
    assert silos_per_unit(np.array([1, 1, 10]), 5).tolist() == [1, 1, 3]  # floor at one seat
    seats = silos_per_unit(np.array([2, 3, 40, 1]), 30)
    assert seats.sum() == 30 and (seats >= 1).all() and (seats <= [2, 3, 40, 1]).all()


def test_label_scheme_honours_units():
    units = ["A"] * 6 + ["B"] * 3 + ["f1.txt"] * 4
    corpus = fake_corpus([9, 4], units=units)
    three = partition(corpus, all_blocks(corpus), n_clients=3, scheme="label", seed=0)
    assert [{units[i] for i in part.tolist()} for part in three] == [{"A"}, {"f1.txt"}, {"B"}]
    five = partition(corpus, all_blocks(corpus), n_clients=5, scheme="label", seed=0)
    assert [part.tolist() for part in five] == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9, 10], [11, 12]]
    by_file = partition(corpus, all_blocks(corpus), n_clients=2, scheme="by_file", seed=0)
    assert [part.tolist() for part in by_file] == [list(range(9)), list(range(9, 13))]


def test_partition_uses_only_train_indices():
    corpus = fake_corpus([10, 8, 6])
    corpus.held_out = torch.arange(len(corpus)) % 4 == 0
    train_idx, val_idx = split_validation(corpus)
    for scheme in ("random", "by_file", "label", "dirichlet"):
        parts = partition(corpus, train_idx, n_clients=3, scheme=scheme, seed=0)
        assert_exact_cover(parts, train_idx)
        assert not set(torch.cat(parts).tolist()) & set(val_idx.tolist())


def test_dirichlet_is_seeded_and_skewed_for_small_alpha():
    corpus = fake_corpus([400, 300, 300])
    parts = partition(corpus, all_blocks(corpus), 4, "dirichlet", seed=5, dirichlet_alpha=0.1)
    assert_exact_cover(parts, all_blocks(corpus))
    again = partition(corpus, all_blocks(corpus), 4, "dirichlet", seed=5, dirichlet_alpha=0.1)
    assert all(torch.equal(a, b) for a, b in zip(parts, again))

    def mean_largest_file_share(alpha: float) -> float:
        shares = []
        for seed in range(10):
            for part in partition(corpus, all_blocks(corpus), 4, "dirichlet", seed, dirichlet_alpha=alpha):
                counts = torch.bincount(corpus.source[part], minlength=3)
                shares.append((counts.max() / counts.sum()).item())
        return sum(shares) / len(shares)
    # Each client's blocks come mostly from one file when alpha is small; about a third each
    # (400/1000 of file 0) when alpha is large.
    assert mean_largest_file_share(0.1) > 0.75
    assert mean_largest_file_share(1000.0) < 0.45


@pytest.mark.parametrize("n_clients, scheme, message", [
    (3, "silo", "partition scheme 'silo' is unknown"),
    (0, "random", "n_clients 0 is invalid for scheme 'random' over 6 training blocks"),
    (7, "by_file", "scheme 'by_file' cannot give 7 clients a block each from 6 training blocks"),
    (6, "dirichlet", "scheme 'dirichlet' .* left a client empty .* 6 clients over 6 blocks"),
])
def test_bad_partitions_are_rejected(n_clients, scheme, message):
    corpus = fake_corpus([3, 3])
    with pytest.raises(ValueError, match=message):
        partition(corpus, all_blocks(corpus), n_clients, scheme, seed=0, dirichlet_alpha=0.01)


def test_duplicate_train_indices_are_rejected():
    corpus = fake_corpus([3, 3])
    with pytest.raises(ValueError, match="train_idx holds 1 duplicate"):
        partition(corpus, torch.tensor([0, 1, 1]), 2, "random", seed=0)

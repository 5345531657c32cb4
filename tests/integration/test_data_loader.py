"""Tests of fedbiobert.data.loader: exact batch counts, sampling only the given blocks with
seeded cycling permutations, identical batches for any num_workers, one loader (one set of
workers) for many silos and rounds, and validation batches."""
import multiprocessing

import pytest
import torch

from fedbiobert.data.loader import Batch, BatchLoader, silo_batches, sample_plan, validation_batches
from fedbiobert.data.masking import IGNORE_INDEX, MaskingSpec
from fedbiobert.data.token_cache import TokenizedCorpus

PAD, CLS, SEP, MASK = 0, 1, 2, 3
SPEC = MaskingSpec(mask_token_id=MASK, vocab_size=100, special_token_ids=(PAD, CLS, SEP, MASK))


def fake_corpus(num_blocks: int = 20, length: int = 16) -> TokenizedCorpus:
    """Block i: [CLS] i+10 ... [SEP] with i % 4 trailing pads, every block distinct."""
    generator = torch.Generator().manual_seed(0)
    blocks = torch.randint(10, 100, (num_blocks, length), generator=generator)
    blocks[:, 1] = torch.arange(num_blocks) + 10
    blocks[:, 0] = CLS
    for i in range(num_blocks):
        end = length - 1 - i % 4
        blocks[i, end] = SEP
        blocks[i, end + 1:] = PAD
    return TokenizedCorpus(blocks=blocks, source=torch.zeros(num_blocks, dtype=torch.int64),
                           unit=["u"] * num_blocks, files=["f.txt"], pad_token_id=PAD)


def original_rows(corpus: TokenizedCorpus, batch: Batch) -> list[int]:
    """Recover which corpus block each batch row came from (undoing the masking)."""
    unmasked = torch.where(batch.labels != IGNORE_INDEX, batch.labels, batch.input_ids)
    rows = []
    for row in unmasked:
        matches = (corpus.blocks[:] == row).all(dim=1).nonzero().flatten().tolist()
        assert len(matches) == 1
        rows.append(matches[0])
    return rows


def as_tuples(batches) -> list[tuple[list, list, list]]:
    return [(b.input_ids.tolist(), b.attention_mask.tolist(), b.labels.tolist()) for b in batches]


def test_exact_number_of_masked_batches_from_the_given_blocks():
    corpus = fake_corpus()
    indices = torch.tensor([2, 5, 7, 11, 13, 17])
    batches = list(silo_batches(corpus, indices, batch_size=4, num_batches=3, spec=SPEC, seed=9))
    assert len(batches) == 3
    for batch in batches:
        assert batch.input_ids.shape == batch.labels.shape == (4, 16)
        assert batch.input_ids.dtype == batch.attention_mask.dtype == batch.labels.dtype == torch.int64
        rows = original_rows(corpus, batch)
        assert set(rows) <= set(indices.tolist())
        assert torch.equal(batch.attention_mask, (corpus.blocks[rows] != PAD).long())
        assert batch.num_tokens == int((corpus.blocks[rows] != PAD).sum())
        assert (batch.labels != IGNORE_INDEX).any()


def test_plan_cycles_through_fresh_permutations():
    indices = torch.tensor([3, 4, 8, 9, 15])
    plan = sample_plan(indices, batch_size=2, num_batches=5, seed=1)
    assert plan.shape == (5, 2)
    flat = plan.flatten().tolist()
    assert sorted(flat[:5]) == sorted(flat[5:]) == [3, 4, 8, 9, 15]  # each block once per cycle
    assert flat[:5] != flat[5:]  # a fresh permutation, not the first one repeated
    assert torch.equal(plan, sample_plan(indices, 2, 5, seed=1))
    assert not torch.equal(plan, sample_plan(indices, 2, 5, seed=2))


def test_batches_are_identical_for_any_num_workers():
    corpus = fake_corpus()
    indices = torch.arange(3, 19)
    in_process = as_tuples(silo_batches(corpus, indices, 4, 6, SPEC, seed=42, num_workers=0))
    with_workers = as_tuples(silo_batches(corpus, indices, 4, 6, SPEC, seed=42, num_workers=2))
    assert in_process == with_workers
    other_seed = as_tuples(silo_batches(corpus, indices, 4, 6, SPEC, seed=43, num_workers=0))
    assert other_seed != in_process


@pytest.mark.parametrize("num_workers", [0, 2])
def test_one_loader_serves_every_silo_and_round_with_the_same_workers(num_workers):
    """A client process's BatchLoader is made once: its workers are forked on the first pass and
    serve every later (silo, seed) pass, an abandoned half-read pass included, and each pass is
    exactly the one-shot batches of that (silo, seed)."""
    corpus = fake_corpus()
    silos = {0: torch.arange(0, 7), 1: torch.arange(7, 20)}
    loader = BatchLoader(corpus, batch_size=3, num_batches=4, spec=SPEC, num_workers=num_workers)
    before = {child.pid for child in multiprocessing.active_children()}
    workers = None
    for round_seed in (5, 6):
        for silo, indices in silos.items():
            passes = loader.batches(indices, seed=round_seed * 10 + silo)
            if silo == 1 and round_seed == 5:
                next(passes)  # a silo cut off after one step: the next pass must not see its leftovers
                continue
            got = as_tuples(passes)
            assert got == as_tuples(silo_batches(corpus, indices, 3, 4, SPEC, seed=round_seed * 10 + silo))
            now = {child.pid for child in multiprocessing.active_children()} - before
            assert len(now) == num_workers and (workers is None or now == workers)
            workers = now
    assert as_tuples(loader.batches(silos[1], seed=51)) == as_tuples(silo_batches(corpus, silos[1], 3, 4, SPEC, 51))


def test_each_pass_advances_the_global_generator_as_a_fresh_data_loader_did():
    """Dropout is seeded before a silo's passes: they must move the global generator alike for any
    num_workers, and as much as when each pass made its own DataLoader."""
    def after_passes(make_pass) -> list[float]:
        torch.manual_seed(3)
        draws = []
        for seed in range(3):
            list(make_pass(seed))
            draws.append(torch.rand(1).item())
        return draws

    corpus = fake_corpus()
    expected = after_passes(lambda seed: torch.utils.data.DataLoader(range(2), batch_size=None))
    for num_workers in (0, 2):
        loader = BatchLoader(corpus, 2, 2, SPEC, num_workers=num_workers)
        assert after_passes(lambda seed: loader.batches(torch.arange(5), seed)) == expected


def test_zero_batches_and_bad_arguments():
    corpus = fake_corpus()
    assert list(silo_batches(corpus, torch.arange(4), 2, 0, SPEC, seed=0)) == []
    with pytest.raises(ValueError, match="batch_size 0 is invalid"):
        silo_batches(corpus, torch.arange(4), 0, 1, SPEC, seed=0)
    with pytest.raises(ValueError, match="num_workers -1 is invalid"):
        silo_batches(corpus, torch.arange(4), 2, 1, SPEC, seed=0, num_workers=-1)
    with pytest.raises(ValueError, match="indices is empty but 2 batches were asked for"):
        silo_batches(corpus, torch.tensor([], dtype=torch.int64), 2, 2, SPEC, seed=0)


def test_batch_to_device_returns_a_new_batch():
    batch = next(iter(silo_batches(fake_corpus(), torch.arange(4), 2, 1, SPEC, seed=0)))
    moved = batch.to("cpu", non_blocking=True)
    assert moved is not batch and torch.equal(moved.input_ids, batch.input_ids)
    assert torch.equal(moved.labels, batch.labels) and torch.equal(moved.attention_mask, batch.attention_mask)


def test_validation_batches_are_in_order_and_deterministic():
    corpus = fake_corpus()
    indices = torch.tensor([1, 4, 6, 8, 10, 12, 19])
    every = validation_batches(corpus, indices, batch_size=3, spec=SPEC, seed=0, max_batches=None)
    assert [len(batch.input_ids) for batch in every] == [3, 3, 1]
    assert [original_rows(corpus, batch) for batch in every] == [[1, 4, 6], [8, 10, 12], [19]]
    first_two = validation_batches(corpus, indices, batch_size=3, spec=SPEC, seed=0, max_batches=2)
    assert as_tuples(first_two) == as_tuples(every[:2])
    assert as_tuples(validation_batches(corpus, indices, 3, SPEC, 0, None)) == as_tuples(every)
    assert validation_batches(corpus, indices[:0], 3, SPEC, 0, None) == []
    with pytest.raises(ValueError, match="max_batches -1 is invalid"):
        validation_batches(corpus, indices, 3, SPEC, 0, max_batches=-1)

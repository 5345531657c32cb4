"""Recovery scores and the baselines of the privacy audit (fedbiobert/privacy/scoring.py), on hand-made sequences."""
import torch

from fedbiobert.privacy.scoring import position_guesses, recovery, unigram_guesses
from fedbiobert.privacy.texts import Sequences

PAD, CLS, SEP = 0, 101, 102


def _sequences(rows: list[list[int]], entity_rows: list[list[bool]] | None = None, width: int = 6) -> Sequences:
    ids = torch.full((len(rows), width), PAD)
    scored = torch.zeros((len(rows), width), dtype=torch.bool)
    entity = torch.zeros((len(rows), width), dtype=torch.bool)
    for index, row in enumerate(rows):
        ids[index, :len(row) + 2] = torch.tensor([CLS, *row, SEP])
        scored[index, 1:len(row) + 1] = True
        if entity_rows:
            entity[index, 1:len(row) + 1] = torch.tensor(entity_rows[index])
    return Sequences(ids, (ids != PAD).long(), scored, entity, ["test"] * len(rows))


def test_recovery_counts_text_tokens_entities_and_whole_sequences():
    silo = _sequences([[5, 6, 7], [8, 9]], [[False, True, True], [False, False]])
    targets = silo.input_ids[silo.scored]  # 5 6 7 8 9
    guesses = torch.stack([targets, targets + 1, targets + 2, targets + 3, targets + 4], dim=1)
    guesses[1, 0], guesses[1, 1] = 1, 6  # token 6: second guess; sequence 0 is not recovered whole
    scores = recovery(guesses, silo)
    assert scores["top1"] == 0.8 and scores["top5"] == 1.0
    assert scores["entity_top1"] == 0.5 and scores["entity_top5"] == 1.0
    assert scores["exact_sequences"] == 0.5 and scores["tokens"] == 5 and scores["entity_tokens"] == 2


def test_no_entities_gives_none_not_a_number():
    silo = _sequences([[5, 6]])
    guesses = silo.input_ids[silo.scored][:, None].repeat(1, 5)
    assert recovery(guesses, silo)["entity_top1"] is None


def test_position_baseline_reads_the_public_text_per_position():
    public = _sequences([[5, 6, 7], [5, 8, 7], [5, 8, 9]])
    silo = _sequences([[5, 8, 9], [9, 9, 9]])
    first = position_guesses(public, silo, k=1)[:, 0]
    # the most frequent public token at positions 1, 2 and 3: 5, 8, 7
    assert first.tolist() == [5, 8, 7, 5, 8, 7]
    unigram = unigram_guesses(public, silo, k=1)[:, 0]
    assert set(unigram.tolist()) <= {5, 7, 8}  # the most frequent public token(s), everywhere

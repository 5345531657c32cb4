"""NER (seqeval strict vs conlleval vs lenient) and classification metrics on hand-made cases, and the
printed table."""
from __future__ import annotations

import pytest

from fedbiobert.finetune.metrics import classification_scores, lenient_scores, ner_scores
from fedbiobert.finetune.output import results_table, summarize, summary_names


def test_strict_and_lenient_differ_on_a_partial_match():
    gold = [["O", "B-Disease", "I-Disease", "I-Disease", "O", "B-Chemical"]]
    pred = [["O", "B-Disease", "I-Disease", "O", "O", "B-Chemical"]]  # disease span one word short
    scores = ner_scores(gold, pred)
    assert scores["precision"] == pytest.approx(0.5)   # Chemical right, Disease wrong boundary
    assert scores["recall"] == pytest.approx(0.5)
    assert scores["f1"] == pytest.approx(0.5)
    assert scores["lenient_f1"] == pytest.approx(1.0)  # both overlap a gold entity of their type
    assert scores["per_type"]["Disease"]["f1"] == 0.0
    assert scores["per_type"]["Disease"]["lenient_f1"] == 1.0
    assert scores["per_type"]["Chemical"]["f1"] == 1.0


def test_strict_mode_rejects_an_entity_opened_by_i():
    gold = [["B-Disease", "I-Disease"]]
    pred = [["I-Disease", "I-Disease"]]  # invalid IOB2: strict finds no entity, conlleval-style overlap does
    scores = ner_scores(gold, pred)
    assert scores["f1"] == 0.0 and scores["lenient_f1"] == 1.0


def test_conlleval_mode_counts_a_predicted_entity_opened_by_i():
    gold = [["B-Disease", "I-Disease", "O", "B-Chemical"]]
    pred = [["I-Disease", "I-Disease", "O", "B-Chemical"]]  # right span and type, but opened by I-
    scores = ner_scores(gold, pred)
    # strict drops the I- span: 1 of 1 predicted right, 1 of 2 gold found
    assert (scores["precision"], scores["recall"]) == (1.0, 0.5) and scores["f1"] == pytest.approx(2 / 3)
    assert scores["conlleval_precision"] == 1.0 and scores["conlleval_recall"] == 1.0
    assert scores["conlleval_f1"] == 1.0
    assert scores["per_type"]["Disease"]["f1"] == 0.0 and scores["per_type"]["Disease"]["conlleval_f1"] == 1.0


def test_conlleval_mode_keeps_a_gold_entity_opened_by_i():
    gold = [["O", "I-Disease", "I-Disease"]]  # invalid IOB2 in the gold file: strict does not see it at all
    pred = [["O", "B-Disease", "I-Disease"]]
    scores = ner_scores(gold, pred)
    assert scores["f1"] == 0.0 and scores["conlleval_f1"] == 1.0
    assert scores["per_type"]["Disease"]["support"] == 0 and scores["per_type"]["Disease"]["conlleval_f1"] == 1.0


def test_table_and_summary_show_conlleval_f1():
    runs = [{"seed": seed, **ner_scores([["B-Disease", "O"]], [["I-Disease", "O"]]), "train_seconds": 1.0}
            for seed in (1, 2)]
    mean, std = summarize(runs, summary_names("ner"))
    assert mean["conlleval_f1"] == 1.0 and mean["f1"] == 0.0 and std["conlleval_f1"] == 0.0
    assert "conlleval_precision" in mean and "conlleval_recall" in mean
    table = results_table({"task": "ner", "runs": runs, "mean": mean, "std": std})
    header = table.splitlines()[0]
    assert "| f1 | conlleval_f1 | lenient_f1 |" in header
    assert "| 1 | 0.0000 | 0.0000 | 0.0000 | 1.0000 |" in table  # strict P/R/F1 0, conlleval F1 1


def test_lenient_needs_the_same_type_and_counts_each_side():
    gold = [["B-Disease", "O", "B-Disease"]]
    pred = [["B-Chemical", "O", "B-Disease"]]
    lenient = lenient_scores(gold, pred)["all"]
    assert lenient["precision"] == pytest.approx(0.5) and lenient["recall"] == pytest.approx(0.5)


def test_no_entities_scores_zero():
    assert ner_scores([["O", "O"]], [["O", "O"]])["f1"] == 0.0


def test_classification_accuracy_and_macro_f1():
    scores = classification_scores([0, 1, 2, 2], [0, 1, 1, 2], ["a", "b", "c"])
    assert scores["accuracy"] == pytest.approx(0.75)
    # per-class F1: a 1, b 2/3, c 2/3
    assert scores["macro_f1"] == pytest.approx((1 + 2 / 3 + 2 / 3) / 3)
    assert scores["per_class"]["c"]["support"] == 2


def test_macro_f1_counts_a_class_absent_from_test():
    scores = classification_scores([0, 0], [0, 0], ["a", "b"])
    assert scores["accuracy"] == 1.0 and scores["macro_f1"] == pytest.approx(0.5)

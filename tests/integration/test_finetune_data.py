"""Sub-token label alignment, splitting of long sentences (every gold entity scored exactly once),
CSV reading, silo splits."""
from __future__ import annotations

import random

import pytest

from fedbiobert.data.tokenizer import load_tokenizer
from fedbiobert.finetune.data_classification import encode_classification, label_list, read_csv
from fedbiobert.constants import IGNORE_INDEX
from fedbiobert.finetune.data_ner import (Sentence, encode_ner, merge_predictions, read_conll,
                                          split_points)
from fedbiobert.finetune.metrics import ner_scores
from fedbiobert.finetune.silos import split_silos
from tests.support.finetune_helpers import write_vocab

LABELS = ["O", "B-Disease", "I-Disease"]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return load_tokenizer(write_vocab(tmp_path_factory.mktemp("vocab") / "vocab.txt"))


def test_label_on_first_sub_token_only(tokenizer):
    sentence = Sentence(["the", "ataxias", "xs"], ["O", "B-Disease", "I-Disease"])
    (chunk,) = encode_ner([sentence], tokenizer, LABELS, max_len=32)
    tokens = tokenizer.convert_ids_to_tokens(chunk.input_ids)
    assert tokens == ["[CLS]", "the", "ataxia", "##s", "x", "##s", "[SEP]"]
    assert chunk.labels == [IGNORE_INDEX, 0, 1, IGNORE_INDEX, 2, IGNORE_INDEX, IGNORE_INDEX]


def test_split_points_fill_the_budget_or_end_after_late_punctuation():
    words = ["the", "patient", "has", "breast", "cancer", "today"]
    assert split_points([1] * 6, words, budget=4) == [(0, 4), (4, 6)]  # no punctuation: the budget decides
    assert split_points([1] * 6, ["the", "patient", ",", "has", "cancer", "."], budget=4) == [(0, 3), (3, 6)]
    assert split_points([1] * 6, ["a", ",", "b", "c", "d", "e"], budget=4) == [(0, 4), (4, 6)]  # too early
    assert split_points([2, 1, 1, 1], ["ataxia", "of", "a", "patient"], budget=3) == [(0, 2), (2, 4)]  # sub-tokens
    assert split_points([5, 1], ["x", "y"], budget=3) == [(0, 1), (1, 2)]  # an over-long word alone


def test_chunk_boundaries_ignore_the_tags(tokenizer):
    """Evaluation chunks must not be chosen from gold tags: same words, any tags, same chunks."""
    words = ["the", "ataxia", "telangiectasia", "of", "a", "patient", "has", "breast", "cancer", ","] * 6
    rng = random.Random(0)
    taggings = [["O"] * len(words), ["B-Disease"] + ["I-Disease"] * (len(words) - 1)]
    for _ in range(8):  # random valid IOB2 taggings: entities start and end anywhere, across any cut
        tags = [rng.choice(LABELS) for _ in words]
        taggings.append([tag if tag != "I-Disease" or index and tags[index - 1] != "O" else "B-Disease"
                         for index, tag in enumerate(tags)])
    layouts = {tuple((chunk.first_word, chunk.num_words)
                     for chunk in encode_ner([Sentence(words, tags)], tokenizer, LABELS, max_len=16))
               for tags in taggings}
    assert len(layouts) == 1 and len(next(iter(layouts))) > 4


def test_long_sentence_is_split_and_every_gold_entity_scored_once(tokenizer):
    words, tags = [], []
    for _ in range(12):  # 12 entities of 2 words (ataxia telangiectasia) among O words
        words += ["the", "ataxia", "telangiectasia", "of", "a", "patient"]
        tags += ["O", "B-Disease", "I-Disease", "O", "O", "O"]
    sentence = Sentence(words, tags)
    chunks = encode_ner([sentence], tokenizer, LABELS, max_len=16)
    assert len(chunks) > 4 and all(len(chunk.input_ids) <= 16 for chunk in chunks)
    assert sum(chunk.num_words for chunk in chunks) == len(words)  # a partition: nothing cut, nothing twice
    perfect = [[label for label in chunk.labels if label != IGNORE_INDEX] for chunk in chunks]
    merged = merge_predictions(chunks, perfect, [sentence], LABELS)
    assert merged == [tags]
    scores = ner_scores([tags], merged)
    assert scores["per_type"]["Disease"]["support"] == 12 and scores["f1"] == 1.0


def test_read_conll_sentences_and_line_numbers(tmp_path):
    path = tmp_path / "train.tsv"
    path.write_text("Breast\tB-Disease\ncancer\tI-Disease\n\n\nNo\tO\n", encoding="utf-8")
    sentences = read_conll(path)
    assert [s.words for s in sentences] == [["Breast", "cancer"], ["No"]]
    assert sentences[1].lines == [5]


def test_csv_and_label_order(tmp_path, tokenizer):
    path = tmp_path / "train.csv"
    path.write_text('label,text\n10,"the patient, has cancer"\n2,no disease\n', encoding="utf-8")
    documents = read_csv(path)
    assert [d.label for d in documents] == ["10", "2"] and documents[0].text == "the patient, has cancer"
    labels = label_list(documents)
    assert labels == ["2", "10"]
    encoded = encode_classification(documents, tokenizer, labels, max_len=4)
    assert [e.labels for e in encoded] == [1, 0] and len(encoded[0].input_ids) == 4


@pytest.mark.parametrize("scheme", ["random", "dirichlet"])
def test_silos_partition_the_examples(scheme):
    keys = ["a"] * 30 + ["b"] * 30
    parts = split_silos(keys, 5, scheme, seed=3, alpha=0.3)
    assert len(parts) == 5 and all(parts)
    assert sorted(index for part in parts for index in part) == list(range(60))

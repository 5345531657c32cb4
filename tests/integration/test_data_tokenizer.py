"""Tests of fedbiobert.data.tokenizer: loading the real SciBERT vocab or a saved folder,
training small BERT/RoBERTa tokenizers on real text slices, their cache and fingerprint."""
import logging

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from fedbiobert.data.tokenizer import (
    MODEL_MAX_LENGTH, _save_atomically, build_tokenizer, tokenizer_fingerprint,
)
from tests.conftest import SCIVOCAB, copy_head

VOCAB_SIZE = 2000


@pytest.fixture(scope="module")
def corpus_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("corpus")
    return [
        copy_head("pubmed_genia_abstracts.txt", folder / "genia.txt", 200),
        copy_head("clinical_mtsamples_notes.txt", folder / "notes.txt", 100),
    ]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


def test_loads_real_scivocab_with_every_line_as_an_id(tmp_path):
    lines = SCIVOCAB.read_text(encoding="utf-8").split("\n")[:-1]
    tokenizer = build_tokenizer("bert", str(SCIVOCAB), [], tmp_path)
    # SciBERT's vocab contains one empty line; it is still an id, so len == number of lines.
    assert len(tokenizer) == len(lines) == 31090
    assert tokenizer.cls_token_id == lines.index("[CLS]")
    assert tokenizer.mask_token_id == lines.index("[MASK]")
    ids = tokenizer("Protein KINASE").input_ids
    assert tokenizer.convert_ids_to_tokens(ids) == ["[CLS]", "protein", "kinase", "[SEP]"]
    assert tokenizer.model_max_length == MODEL_MAX_LENGTH


def test_vocab_without_special_tokens_is_rejected(tmp_path):
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("[PAD]\n[UNK]\n[SEP]\nthe\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"vocab.txt' lacks special token\(s\) \[CLS\] \[MASK\]"):
        build_tokenizer("bert", str(vocab), [], tmp_path)


@pytest.mark.parametrize("arch, tokenizer_path, vocab_size, message", [
    ("gpt2", None, 2000, "arch 'gpt2' is not supported"),
    ("bert", "/nonexistent/tok", 2000, "tokenizer_path '/nonexistent/tok' does not exist"),
    ("bert", None, 10, "vocab_size 10 is too small"),
])
def test_bad_arguments_are_rejected(tmp_path, corpus_files, arch, tokenizer_path, vocab_size, message):
    with pytest.raises(ValueError, match=message):
        build_tokenizer(arch, tokenizer_path, corpus_files, tmp_path, vocab_size=vocab_size)


def test_non_txt_vocab_file_is_rejected(tmp_path):
    vocab = tmp_path / "vocab.json"
    vocab.write_text("{}", encoding="utf-8")
    with pytest.raises(ValueError, match=r"vocab.json' is not a .txt vocab file"):
        build_tokenizer("bert", str(vocab), [], tmp_path)


def test_trains_lowercase_wordpiece_for_bert_and_reuses_the_cache(corpus_files, cache_dir, caplog):
    tokenizer = build_tokenizer("bert", None, corpus_files, cache_dir, vocab_size=VOCAB_SIZE)
    assert len(tokenizer) == VOCAB_SIZE
    assert tokenizer.convert_ids_to_tokens(list(range(5))) == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    ids = tokenizer("The PATIENT").input_ids
    assert ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id
    assert ids == tokenizer("the patient").input_ids
    assert tokenizer.model_max_length == MODEL_MAX_LENGTH
    saved = list((cache_dir / "tokenizers").iterdir())
    assert len(saved) == 1 and (saved[0] / "tokenizer.json").is_file()
    mtime = (saved[0] / "tokenizer.json").stat().st_mtime_ns

    with caplog.at_level(logging.INFO, logger="fedbiobert.data.tokenizer"):
        again = build_tokenizer("bert", None, corpus_files, cache_dir, vocab_size=VOCAB_SIZE)
    assert f"reusing tokenizer at {saved[0]}" in caplog.text
    assert (saved[0] / "tokenizer.json").stat().st_mtime_ns == mtime
    assert tokenizer_fingerprint(again) == tokenizer_fingerprint(tokenizer)
    assert again("the patient").input_ids == ids


def test_trains_byte_level_bpe_for_roberta(corpus_files, tmp_path):
    tokenizer = build_tokenizer("roberta", None, corpus_files, tmp_path, vocab_size=VOCAB_SIZE)
    assert len(tokenizer) == VOCAB_SIZE
    assert tokenizer.convert_ids_to_tokens(list(range(5))) == ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    ids = tokenizer("The patient").input_ids
    assert ids[0] == tokenizer.bos_token_id == tokenizer.cls_token_id == 0
    assert ids[-1] == tokenizer.eos_token_id == tokenizer.sep_token_id == 2
    assert ids != tokenizer("the patient").input_ids  # byte-level BPE keeps case
    assert tokenizer.decode(ids, skip_special_tokens=True) == "The patient"


def test_cache_key_follows_vocab_size_and_corpus(corpus_files, tmp_path):
    build_tokenizer("bert", None, corpus_files, tmp_path, vocab_size=VOCAB_SIZE)
    build_tokenizer("bert", None, corpus_files, tmp_path, vocab_size=1500)
    build_tokenizer("bert", None, corpus_files[:1], tmp_path, vocab_size=VOCAB_SIZE)
    assert len(list((tmp_path / "tokenizers").iterdir())) == 3


def test_loads_a_saved_tokenizer_folder(corpus_files, cache_dir, tmp_path):
    trained = build_tokenizer("bert", None, corpus_files, cache_dir, vocab_size=VOCAB_SIZE)
    trained.save_pretrained(str(tmp_path / "saved"))
    loaded = build_tokenizer("bert", str(tmp_path / "saved"), [], tmp_path)
    assert loaded("Renal failure").input_ids == trained("Renal failure").input_ids
    assert tokenizer_fingerprint(loaded) == tokenizer_fingerprint(trained)
    assert loaded.model_max_length == MODEL_MAX_LENGTH


def test_folder_that_is_no_tokenizer_is_rejected(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"tokenizer folder '.*empty' could not be loaded"):
        build_tokenizer("bert", str(tmp_path / "empty"), [], tmp_path)


def test_folder_without_mask_token_is_rejected(tmp_path):
    vocab = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "a": 4}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]"
    )
    tokenizer.save_pretrained(str(tmp_path / "nomask"))
    with pytest.raises(ValueError, match=r"nomask' has no mask token"):
        build_tokenizer("bert", str(tmp_path / "nomask"), [], tmp_path)


def test_fingerprint_distinguishes_tokenizers(corpus_files, cache_dir):
    bert = build_tokenizer("bert", None, corpus_files, cache_dir, vocab_size=VOCAB_SIZE)
    scivocab = build_tokenizer("bert", str(SCIVOCAB), [], cache_dir)
    assert tokenizer_fingerprint(bert) != tokenizer_fingerprint(scivocab)
    reloaded = build_tokenizer("bert", str(SCIVOCAB), [], cache_dir)
    assert tokenizer_fingerprint(scivocab) == tokenizer_fingerprint(reloaded)
    bert("some text to encode", padding="max_length", max_length=12, truncation=True)
    assert tokenizer_fingerprint(bert) == tokenizer_fingerprint(
        build_tokenizer("bert", None, corpus_files, cache_dir, vocab_size=VOCAB_SIZE)
    )


def test_atomic_save_keeps_the_folder_another_process_wrote(corpus_files, cache_dir, tmp_path):
    tokenizer = build_tokenizer("bert", None, corpus_files, cache_dir, vocab_size=VOCAB_SIZE)
    target = tmp_path / "tokenizers" / "key"
    _save_atomically(tokenizer, target)
    first = (target / "tokenizer.json").read_bytes()
    _save_atomically(tokenizer, target)  # the "slower process": its rename fails, no error
    assert (target / "tokenizer.json").read_bytes() == first
    assert sorted(path.name for path in target.parent.iterdir()) == ["key"]  # no staging left

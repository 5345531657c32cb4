"""Tests of fedbiobert.data.token_cache: block packing (hand-computed), packing of real text
slices with sidecar units, and the per-file cache (reuse, invalidation, damaged files)."""
import logging

import numpy as np
import pytest
import torch

from fedbiobert.data import token_cache
from fedbiobert.data.corpus import read_documents
from fedbiobert.data.token_cache import TokenizedCorpus, load_or_build_token_cache, pack_documents
from fedbiobert.data.tokenizer import build_tokenizer
from tests.conftest import SCIVOCAB, copy_head

NOTES = "clinical_mtsamples_notes"
MAX_LEN = 64


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return build_tokenizer("bert", str(SCIVOCAB), [], tmp_path_factory.mktemp("unused"))


@pytest.fixture
def corpus_files(tmp_path):
    folder = tmp_path / "corpus"
    copy_head(f"{NOTES}.specialty", folder / f"{NOTES}.specialty", 40)
    return [
        copy_head(f"{NOTES}.txt", folder / f"{NOTES}.txt", 40),
        copy_head("general_wikitext2_test.txt", folder / "wiki.txt", 1),
        copy_head("pubmed_genia_abstracts.txt", folder / "genia.txt", 30),
    ]


def test_pack_joins_documents_with_separator_in_one_block():
    blocks = pack_documents([[5, 6, 7], [8, 9]], start_id=1, end_id=2, pad_id=0, max_len=8)
    assert blocks.tolist() == [[1, 5, 6, 7, 2, 8, 9, 2]]


def test_pack_continues_long_documents_and_pads_the_tail():
    doc = list(range(100, 158))  # 58 ids: one full block of 38 content ids + a tail of 20
    blocks = pack_documents([doc], start_id=1, end_id=2, pad_id=0, max_len=40)
    assert blocks.shape == (2, 40)
    assert blocks[0].tolist() == [1] + doc[:38] + [2]
    assert blocks[1].tolist() == [1] + doc[38:] + [2] + [0] * 18


def test_pack_drops_a_tiny_tail_but_keeps_a_lone_short_block():
    blocks = pack_documents([list(range(100, 148))], start_id=1, end_id=2, pad_id=0, max_len=40)
    assert blocks.tolist() == [[1] + list(range(100, 138)) + [2]]  # the 10-id tail is dropped
    lone = pack_documents([[7, 8, 9]], start_id=1, end_id=2, pad_id=0, max_len=8)
    assert lone.tolist() == [[1, 7, 8, 9, 2, 0, 0, 0]]


def test_real_slice_blocks_are_framed_and_grouped(corpus_files, tokenizer, tmp_path):
    corpus = load_or_build_token_cache(corpus_files, tokenizer, MAX_LEN, tmp_path / "cache")
    blocks = corpus.blocks[:]
    assert blocks.dtype == corpus.blocks.dtype == torch.int64 and corpus.blocks.shape == (len(corpus), MAX_LEN)
    assert corpus.files == [f"{NOTES}.txt", "wiki.txt", "genia.txt"]
    assert (blocks[:, 0] == tokenizer.cls_token_id).all()
    lengths = (blocks != tokenizer.pad_token_id).sum(dim=1)
    assert torch.equal(corpus.lengths, lengths)  # the metadata's counts, without reading a block
    last_real = blocks[torch.arange(len(corpus)), lengths - 1]
    assert (last_real == tokenizer.sep_token_id).all()
    assert (lengths[:-1] >= 2).all() and lengths.max() == MAX_LEN
    assert corpus.num_tokens() == int(lengths.sum())
    assert corpus.num_tokens(torch.tensor([0, 1])) == int(lengths[:2].sum())
    specialties = {document.label for document in read_documents(corpus_files[0])}
    notes_units = {corpus.unit[i] for i in (corpus.source == 0).nonzero().flatten().tolist()}
    assert notes_units == specialties and len(specialties) > 3
    assert {corpus.unit[i] for i in (corpus.source == 2).nonzero().flatten().tolist()} == {"genia.txt"}
    assert len(corpus.unit) == len(corpus) and corpus.source.tolist() == sorted(corpus.source.tolist())


def test_block_contents_reproduce_the_tokenized_documents(corpus_files, tokenizer, tmp_path):
    corpus = load_or_build_token_cache(corpus_files, tokenizer, MAX_LEN, tmp_path / "cache")
    texts = [document.text for document in read_documents(corpus_files[2])]
    expected = []
    for ids in tokenizer(texts, add_special_tokens=False).input_ids:
        expected += ids + [tokenizer.sep_token_id]
    packed = []
    for block in corpus.blocks[corpus.source == 2].tolist():
        content = [token for token in block if token != tokenizer.pad_token_id]
        packed += content[1:-1] + ([tokenizer.sep_token_id] if len(content) < MAX_LEN else [])
    # Only the last group of content ids (below MIN_TAIL_CONTENT_TOKENS) may be missing.
    assert packed == expected[:len(packed)]
    assert len(expected) - len(packed) < token_cache.MIN_TAIL_CONTENT_TOKENS + 1


def test_second_call_reuses_the_cache_without_tokenizing(
    corpus_files, tokenizer, tmp_path, monkeypatch, caplog
):
    first = load_or_build_token_cache(corpus_files, tokenizer, MAX_LEN, tmp_path / "cache")
    cache_files = sorted((tmp_path / "cache" / "tokens").glob("*.*"))
    assert len(cache_files) == 6 and {path.suffix for path in cache_files} == {".pt", ".npy"}
    mtimes = [path.stat().st_mtime_ns for path in cache_files]

    def fail(*args, **kwargs):
        raise AssertionError("tokenized again")
    monkeypatch.setattr(token_cache, "_tokenize", fail)
    with caplog.at_level(logging.INFO, logger="fedbiobert.data.token_cache"):
        second = load_or_build_token_cache(corpus_files, tokenizer, MAX_LEN, tmp_path / "cache")
    assert caplog.text.count("reusing token cache") == 3
    assert [path.stat().st_mtime_ns for path in cache_files] == mtimes
    assert torch.equal(first.blocks[:], second.blocks[:]) and torch.equal(first.source, second.source)
    assert first.unit == second.unit and first.files == second.files


def test_changed_file_or_sidecar_invalidates_only_its_cache(corpus_files, tokenizer, tmp_path, caplog):
    cache = tmp_path / "cache"
    load_or_build_token_cache(corpus_files, tokenizer, MAX_LEN, cache)
    with open(corpus_files[2], "a", encoding="utf-8") as handle:
        handle.write("Interleukin 2 activates T cells.\n")
    with caplog.at_level(logging.INFO, logger="fedbiobert.data.token_cache"):
        load_or_build_token_cache(corpus_files, tokenizer, MAX_LEN, cache)
    assert caplog.text.count("reusing token cache") == 2 and "tokenizing genia.txt" in caplog.text
    sidecar = corpus_files[0].with_suffix(".specialty")
    sidecar.write_text("Radiology\n" * 40, encoding="utf-8")
    corpus = load_or_build_token_cache(corpus_files, tokenizer, MAX_LEN, cache)
    assert {corpus.unit[i] for i in (corpus.source == 0).nonzero().flatten().tolist()} == {"Radiology"}
    assert len(list((cache / "tokens").glob("*.pt"))) == 5


def test_renamed_file_gets_its_own_units(corpus_files, tokenizer, tmp_path):
    cache = tmp_path / "cache"
    load_or_build_token_cache(corpus_files[1:2], tokenizer, MAX_LEN, cache)
    renamed = corpus_files[1].rename(corpus_files[1].with_name("wiki_copy.txt"))
    corpus = load_or_build_token_cache([renamed], tokenizer, MAX_LEN, cache)
    assert set(corpus.unit) == {"wiki_copy.txt"} and corpus.files == ["wiki_copy.txt"]


def test_max_len_and_label_suffix_are_part_of_the_key(corpus_files, tokenizer, tmp_path):
    cache = tmp_path / "cache"
    load_or_build_token_cache(corpus_files[:1], tokenizer, MAX_LEN, cache)
    short = load_or_build_token_cache(corpus_files[:1], tokenizer, 32, cache)
    unlabelled = load_or_build_token_cache(corpus_files[:1], tokenizer, MAX_LEN, cache, label_suffix=None)
    assert short.blocks.shape[1] == 32 and short.blocks[:].shape[1] == 32
    assert set(unlabelled.unit) == {f"{NOTES}.txt"}
    assert len(list((cache / "tokens").glob("*.pt"))) == 3


@pytest.mark.parametrize("damage", ["metadata", "blocks garbage", "blocks truncated", "blocks missing"])
def test_damaged_cache_file_is_rebuilt(corpus_files, tokenizer, tmp_path, caplog, damage):
    cache = tmp_path / "cache"
    # Read before damaging: truncating a mapped file in place (which the cache itself never does, it
    # replaces files) would make a later read of the map fault.
    expected = load_or_build_token_cache(corpus_files[1:2], tokenizer, MAX_LEN, cache).blocks[:]
    (cache_file,) = (cache / "tokens").glob("*.pt")
    blocks_file = cache_file.with_suffix(".npy")
    if damage == "metadata":
        cache_file.write_bytes(b"not a torch file")
    elif damage == "blocks garbage":
        blocks_file.write_bytes(b"not a numpy file")
    elif damage == "blocks truncated":
        blocks_file.write_bytes(blocks_file.read_bytes()[:-100])
    else:
        blocks_file.unlink()
    with caplog.at_level(logging.WARNING, logger="fedbiobert.data.token_cache"):
        again = load_or_build_token_cache(corpus_files[1:2], tokenizer, MAX_LEN, cache)
    assert "ignoring unreadable token cache" in caplog.text
    assert torch.equal(expected, again.blocks[:])
    assert not list((cache / "tokens").glob(".*.tmp"))  # no temp files left behind


def test_blocks_are_an_int32_memory_map_of_the_cache(corpus_files, tokenizer, tmp_path):
    """The cache stores raw int32 rows; a loaded corpus maps them and reads only the rows asked for."""
    corpus = load_or_build_token_cache(corpus_files, tokenizer, MAX_LEN, tmp_path / "cache")
    stored = [np.load(path) for path in sorted((tmp_path / "cache" / "tokens").glob("*.npy"))]
    assert all(array.dtype == np.int32 and array.shape[1] == MAX_LEN for array in stored)
    assert sum(len(array) for array in stored) == len(corpus)
    assert all(isinstance(part, np.memmap) for part in corpus.blocks._parts)
    assert corpus.blocks.held_rows is None and corpus.blocks.held_bytes == 0
    rows = torch.tensor([len(corpus) - 1, 0, 3])
    assert torch.equal(corpus.blocks[rows], corpus.blocks[:][rows])


def test_roberta_blocks_use_bos_and_eos(corpus_files, tmp_path):
    roberta = build_tokenizer("roberta", None, corpus_files, tmp_path / "cache", vocab_size=1000)
    corpus = load_or_build_token_cache(corpus_files[2:], roberta, MAX_LEN, tmp_path / "cache")
    blocks = corpus.blocks[:]
    assert (blocks[:, 0] == roberta.bos_token_id).all()
    assert (blocks[:-1, -1] == roberta.eos_token_id).all()
    assert corpus.pad_token_id == roberta.pad_token_id == 1


@pytest.mark.parametrize("max_len, files, message", [
    (7, None, "max_len 7 is too small"),
    (MAX_LEN, [], "files is empty"),
])
def test_bad_arguments_are_rejected(corpus_files, tokenizer, tmp_path, max_len, files, message):
    with pytest.raises(ValueError, match=message):
        load_or_build_token_cache(corpus_files if files is None else files, tokenizer, max_len, tmp_path)


def test_num_tokens_on_a_hand_built_corpus():
    corpus = TokenizedCorpus(
        blocks=torch.tensor(np.array([[2, 9, 9, 3], [2, 9, 3, 0], [2, 3, 0, 0]])),
        source=torch.tensor([0, 0, 1]), unit=["a", "a", "b"], files=["a", "b"], pad_token_id=0,
    )
    assert len(corpus) == 3
    assert corpus.num_tokens() == 9
    assert corpus.num_tokens(torch.tensor([1, 2])) == 5


def test_validation_is_held_out_by_document_from_every_file(corpus_files, tokenizer, tmp_path):
    """About val_ratio of each file's documents are packed into blocks of their own: every token
    of a held-out document (a long one spans several blocks) is in validation blocks only."""
    corpus = load_or_build_token_cache(corpus_files, tokenizer, MAX_LEN, tmp_path / "cache", val_ratio=0.2)
    assert corpus.held_out is not None and corpus.held_out.dtype == torch.bool
    for file_index, path in enumerate(corpus_files):
        documents = [d.text for d in read_documents(path)]
        held = token_cache.held_out_documents(documents, 0.2)
        assert len(held) == token_cache.num_held_out(len(documents), 0.2)
        in_file = corpus.source == file_index
        val_blocks, train_blocks = corpus.blocks[in_file & corpus.held_out], corpus.blocks[in_file & ~corpus.held_out]
        if len(documents) >= 2:
            assert len(val_blocks) and len(train_blocks)  # every file with 2+ documents has both sides
        groups = {}  # held-out documents per partition unit (specialty, else the file), in file order
        for i in sorted(held):
            docs = read_documents(path)
            ids = tokenizer(documents[i], add_special_tokens=False)["input_ids"]
            groups.setdefault(docs[i].label or path.name, []).append(ids)
        expected = [block for ids in groups.values() for block in pack_documents(
            ids, tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id, MAX_LEN).tolist()]
        assert val_blocks.tolist() == expected
    # deterministic and seed-free; a different ratio is a different cache entry
    again = load_or_build_token_cache(corpus_files, tokenizer, MAX_LEN, tmp_path / "cache", val_ratio=0.2)
    assert torch.equal(again.held_out, corpus.held_out)
    none = load_or_build_token_cache(corpus_files, tokenizer, MAX_LEN, tmp_path / "cache", val_ratio=0.0)
    assert not none.held_out.any()


def test_held_out_documents_hand_computed():
    texts = ["a", "b", "c", "d", "a"]
    held = token_cache.held_out_documents(texts, 0.4)
    assert len(held) == 2 and held == token_cache.held_out_documents(texts, 0.4)
    assert token_cache.num_held_out(1, 0.5) == 0 and token_cache.num_held_out(2, 0.01) == 1
    assert token_cache.num_held_out(100, 0.01) == 1 and token_cache.num_held_out(3, 0.9) == 2
    # equal texts rank next to each other: both copies of "a" go to the same side
    ranked = token_cache.held_out_documents(texts, 0.6)
    assert (0 in ranked) == (4 in ranked) or len(ranked) == 3

"""Tests of fedbiobert.data.corpus: listing corpus files, reading .txt/.jsonl documents with
sidecar labels, bad-input errors and the corpus fingerprint. Reads slices of the real data."""
import json
from pathlib import Path

import pytest

from fedbiobert.data.corpus import Document, corpus_fingerprint, list_corpus_files, read_documents
from tests.conftest import PRETRAIN, copy_head

NOTES = "clinical_mtsamples_notes"


def raw_lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").split("\n")[:-1]


def test_lists_the_real_pretrain_folder():
    names = [path.name for path in list_corpus_files(PRETRAIN)]
    assert names == [
        "clinical_mtsamples_notes.txt", "general_wikitext2_test.txt", "pmc_craft_fulltext.txt",
        "pubmed_genia_abstracts.txt", "pubmed_hoc_abstracts.txt", "pubmedqa_contexts.txt",
    ]


def test_lists_folder_recursively_sorted_skipping_hidden_and_other_files(tmp_path):
    copy_head("pubmed_genia_abstracts.txt", tmp_path / "b" / "genia.txt", 3)
    copy_head("pubmedqa_contexts.txt", tmp_path / "a.jsonl", 1)
    copy_head("pubmed_hoc_abstracts.txt", tmp_path / ".hidden" / "hoc.txt", 3)
    copy_head("pubmed_hoc_abstracts.txt", tmp_path / ".secret.txt", 3)
    copy_head("pubmed_hoc_abstracts.txt", tmp_path / "notes.csv", 3)
    assert list_corpus_files(tmp_path) == [tmp_path / "a.jsonl", tmp_path / "b" / "genia.txt"]


def test_lists_a_single_file(tmp_path):
    file = copy_head("pubmed_genia_abstracts.txt", tmp_path / "genia.txt", 2)
    assert list_corpus_files(str(file)) == [file]


@pytest.mark.parametrize("case, message", [
    ("missing", "does not exist"),
    ("wrong_suffix", "is not a .txt or .jsonl file"),
    ("no_text_files", "contains no .txt or .jsonl files"),
    ("all_empty", "every corpus file is empty"),
])
def test_list_corpus_files_rejects_bad_paths(tmp_path, case, message):
    target = tmp_path / "corpus"
    if case == "wrong_suffix":
        target = copy_head("pubmed_genia_abstracts.txt", tmp_path / "genia.csv", 2)
    elif case == "no_text_files":
        copy_head("pubmed_genia_abstracts.txt", target / "genia.csv", 2)
    elif case == "all_empty":
        target.mkdir()
        (target / "a.txt").write_text("")
        (target / "b.jsonl").write_text("\n  \n")
    with pytest.raises(ValueError, match=message) as error:
        list_corpus_files(target)
    assert str(target) in str(error.value)


def test_reads_txt_documents_skipping_blank_lines(tmp_path):
    file = copy_head("pubmed_genia_abstracts.txt", tmp_path / "genia.txt", 20)
    lines = raw_lines(file)
    file.write_text("\n".join(lines[:5] + ["", "   "] + lines[5:]) + "\n", encoding="utf-8")
    documents = read_documents(file)
    assert [document.text for document in documents] == [line.strip() for line in lines]
    assert all(document.label is None for document in documents)


def test_reads_jsonl_text_field(tmp_path):
    lines = raw_lines(copy_head("pubmedqa_contexts.txt", tmp_path / "qa.txt", 4))
    records = [json.dumps({"text": line, "id": i}) for i, line in enumerate(lines)]
    file = tmp_path / "qa.jsonl"
    file.write_text("\n".join(records[:2] + [""] + records[2:]) + "\n", encoding="utf-8")
    assert read_documents(file) == [Document(text=line.strip(), label=None) for line in lines]


@pytest.mark.parametrize("bad_line, message", [
    ("{not json", "line 2 is not valid JSON"),
    ('{"title": "no text"}', 'line 2 has no string "text" field'),
    ('{"text": 42}', 'line 2 has no string "text" field'),
    ('["text"]', 'line 2 has no string "text" field'),
])
def test_jsonl_bad_lines_are_named(tmp_path, bad_line, message):
    file = tmp_path / "bad.jsonl"
    file.write_text(json.dumps({"text": "fine"}) + "\n" + bad_line + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=message) as error:
        read_documents(file)
    assert "bad.jsonl" in str(error.value)


def test_sidecar_labels_align_by_raw_line_with_real_notes(tmp_path):
    notes = copy_head(f"{NOTES}.txt", tmp_path / f"{NOTES}.txt", 60)
    labels = raw_lines(copy_head(f"{NOTES}.specialty", tmp_path / f"{NOTES}.specialty", 60))
    lines = raw_lines(notes)
    lines[9] = "   "  # a blank document must not shift the labels of the following lines
    notes.write_text("\n".join(lines) + "\n", encoding="utf-8")
    documents = read_documents(notes)
    assert len(documents) == 59
    assert documents[0].label == "Allergy / Immunology"
    assert [document.label for document in documents] == labels[:9] + labels[10:]
    assert [document.text for document in documents] == [line.strip() for line in lines[:9] + lines[10:]]


def test_sidecar_is_ignored_without_label_suffix(tmp_path):
    notes = copy_head(f"{NOTES}.txt", tmp_path / f"{NOTES}.txt", 5)
    copy_head(f"{NOTES}.specialty", tmp_path / f"{NOTES}.specialty", 5)
    assert all(document.label is None for document in read_documents(notes, label_suffix=None))


def test_sidecar_with_wrong_line_count_is_rejected(tmp_path):
    notes = copy_head(f"{NOTES}.txt", tmp_path / f"{NOTES}.txt", 30)
    copy_head(f"{NOTES}.specialty", tmp_path / f"{NOTES}.specialty", 29)
    with pytest.raises(ValueError, match="has 29 lines but .* has 30"):
        read_documents(notes)


def test_invalid_utf8_is_rejected_with_offset(tmp_path):
    file = tmp_path / "latin1.txt"
    file.write_bytes("first line\nna\u00efve".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin1.txt' is not valid UTF-8: byte offset 13 \(line 2\)"):
        read_documents(file)


def test_binary_file_is_rejected(tmp_path):
    file = tmp_path / "blob.txt"
    file.write_bytes(b"abc\x00def")
    with pytest.raises(ValueError, match=r"blob.txt' looks binary: NUL byte at offset 3"):
        read_documents(file)


def test_fingerprint_follows_content_not_location(tmp_path):
    first = copy_head("pubmed_hoc_abstracts.txt", tmp_path / "one" / "hoc.txt", 10)
    second = copy_head("pubmed_hoc_abstracts.txt", tmp_path / "two" / "hoc.txt", 10)
    assert corpus_fingerprint([first]) == corpus_fingerprint([second])
    data = bytearray(second.read_bytes())
    data[5] = ord("X") if data[5] != ord("X") else ord("Y")  # same size, different content
    second.write_bytes(bytes(data))
    assert corpus_fingerprint([first]) != corpus_fingerprint([second])
    renamed = copy_head("pubmed_hoc_abstracts.txt", tmp_path / "three" / "other.txt", 10)
    assert corpus_fingerprint([renamed]) != corpus_fingerprint([first])  # the name is part of it
    assert corpus_fingerprint([first, renamed]) != corpus_fingerprint([renamed, first])

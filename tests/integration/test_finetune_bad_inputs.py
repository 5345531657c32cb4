"""Every bad input ends with one line naming the value, exit status 2, and no output file."""
from __future__ import annotations

from pathlib import Path

import pytest

from fedbiobert.finetune.cli import main
from fedbiobert.model.build import ModelSpec, build_full_model
from tests.support.finetune_helpers import tiny_model_args, write_vocab

GOOD_NER = "the\tO\nbreast\tB-Disease\ncancer\tI-Disease\n\npatient\tO\nhas\tO\ncancer\tB-Disease\n"


@pytest.fixture
def vocab(tmp_path) -> Path:
    return write_vocab(tmp_path / "vocab.txt")


def ner_folder(root: Path, train: str = GOOD_NER, test: str = GOOD_NER) -> Path:
    folder = root / "ner"
    folder.mkdir()
    (folder / "train.tsv").write_text(train, encoding="utf-8")
    (folder / "test.tsv").write_text(test, encoding="utf-8")
    return folder


def fails_with(capsys, tmp_path, args: list[str], *expected: str) -> str:
    output = tmp_path / "out.json"
    with pytest.raises(SystemExit) as exit_info:
        main(args + ["--output", str(output)])
    assert exit_info.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(lines) == 1, lines
    for text in expected:
        assert text in lines[0]
    assert not output.exists() and not list(tmp_path.glob(".out.json*"))
    return lines[0]


def test_malformed_iob_line_names_file_and_line(tmp_path, vocab, capsys):
    folder = ner_folder(tmp_path, train=GOOD_NER + "\nbroken line without tag\n")
    fails_with(capsys, tmp_path, ["--data", str(folder), *tiny_model_args(vocab)],
               f"{folder / 'train.tsv'}:9:", "malformed IOB line")


def test_bad_tag_is_malformed(tmp_path, vocab, capsys):
    folder = ner_folder(tmp_path, test="the\tX-Disease\n")
    fails_with(capsys, tmp_path, ["--data", str(folder), *tiny_model_args(vocab)], "test.tsv:1:", "X-Disease")


def test_unknown_tag_in_test_split(tmp_path, vocab, capsys):
    folder = ner_folder(tmp_path, test="aspirin\tB-Chemical\n")
    fails_with(capsys, tmp_path, ["--data", str(folder), *tiny_model_args(vocab)],
               "test.tsv:1:", "'B-Chemical'", "never occurs in the training split")


def test_empty_split(tmp_path, vocab, capsys):
    folder = ner_folder(tmp_path, test="\n\n")
    fails_with(capsys, tmp_path, ["--data", str(folder), *tiny_model_args(vocab)], "test.tsv", "empty")


def test_csv_without_the_columns(tmp_path, vocab, capsys):
    folder = tmp_path / "cls"
    folder.mkdir()
    (folder / "train.csv").write_text("category,abstract\n1,the patient\n", encoding="utf-8")
    (folder / "test.csv").write_text("label,text\n1,the patient\n", encoding="utf-8")
    fails_with(capsys, tmp_path, ["--data", str(folder), *tiny_model_args(vocab)],
               "train.csv:1:", "lacks column(s) label, text")


def test_model_folder_that_is_not_an_encoder(tmp_path, vocab, capsys):
    from transformers import GPT2Config
    model_dir = tmp_path / "gpt2"
    GPT2Config(n_layer=1, n_embd=16, n_head=2).save_pretrained(model_dir)
    folder = ner_folder(tmp_path)
    fails_with(capsys, tmp_path, ["--data", str(folder), "--model", str(model_dir)], "'gpt2'", "not a masked-LM")


def test_model_folder_without_config(tmp_path, capsys):
    folder = ner_folder(tmp_path)
    fails_with(capsys, tmp_path, ["--data", str(folder), "--model", str(tmp_path)], "config.json")


def test_tokenizer_not_matching_the_model_vocabulary(tmp_path, vocab, capsys):
    spec = ModelSpec(arch="bert", vocab_size=20, hidden_size=16, num_attention_heads=2, intermediate_size=32,
                     num_layers=1, max_len=64, pad_token_id=0)
    model_dir = tmp_path / "model"
    build_full_model(spec, seed=0).save_pretrained(model_dir)
    folder = ner_folder(tmp_path)
    fails_with(capsys, tmp_path, ["--data", str(folder), "--model", str(model_dir), "--tokenizer", str(vocab),
                                  "--max_len", "32"], "has 57 tokens", "vocab_size is 20")


def test_bad_option_value(tmp_path, vocab, capsys):
    folder = ner_folder(tmp_path)
    fails_with(capsys, tmp_path, ["--data", str(folder), *tiny_model_args(vocab), "--mode", "federated",
                                  "--n_clients", "33"], "--n_clients 33")


def test_probe_value_that_is_not_a_boolean(tmp_path, vocab, capsys):
    folder = ner_folder(tmp_path)
    fails_with(capsys, tmp_path, ["--data", str(folder), *tiny_model_args(vocab), "--probe", "maybe"],
               "--probe", "'maybe' is not a boolean (accepted: True or False)")

"""A resume compares the run's inputs by content: a changed corpus file, another vocabulary, another
corpus selection (--tot_files) or another --init_from model is refused with one line before any process
group forms; a moved corpus and a copied vocab.txt are the same inputs and are accepted; a checkpoint
written before fingerprints existed is accepted with a warning.

One real 2-process run (stopped after round 1 of 2) writes the checkpoint every test resumes from; the
resumes go through preflight's check_run (what run.py and fedbiobert-run call on every rank), one
through the real fedbiobert-run command line."""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
import torch
from transformers import BertConfig, BertForMaskedLM

from fedbiobert.checkpoint import (check_fingerprints, check_resume_vocabulary, model_fingerprint,
                                   resume_state_path, vocabulary_fingerprint)
from fedbiobert.config import ConfigError
from fedbiobert.data.tokenizer import load_tokenizer
from fedbiobert.config.preflight import check_run
from tests.conftest import SCIVOCAB, SMALL_CORPUS, slice_corpus
from tests.support.launch import TINY_MODEL, fedbiobert_run, torchrun

OPTIONS = [*TINY_MODEL, "--num_client_encoder", "1", "--num_server_encoder", "1", "--n_clients", "2",
           "--n_comm_rounds", "2", "--num_batch", "2", "--val_blocks", "8"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, Path]:
    """A run stopped after round 1 of 2, on its own corpus slice and copy of the SciVocab vocab.txt."""
    root = tmp_path_factory.mktemp("trained")
    paths = {"corpus": slice_corpus(root / "corpus", SMALL_CORPUS), "vocab": root / "tok" / "vocab.txt",
             "out": root / "out"}
    paths["vocab"].parent.mkdir()
    shutil.copyfile(SCIVOCAB, paths["vocab"])
    result = torchrun(2, [*run_args(paths["corpus"], paths["vocab"], paths["out"]), "--stop_after_round", "1"],
                      root / "cache")
    assert result.returncode == 0, result.stderr[-3000:]
    return paths


def run_args(corpus: Path, vocab: Path, out: Path) -> list[str]:
    return [*OPTIONS, "--data_dir", str(corpus), "--tokenizer", str(vocab), "--output_dir", str(out)]


def resume(corpus: Path, vocab: Path, out: Path, *extra: str):
    """The (config, state) every rank of a resumed 2-process run starts from."""
    return check_run([*run_args(corpus, vocab, out), "--from_checkpoint", "True", *extra], 2, 2)


def moved_corpus(trained, tmp_path: Path) -> Path:
    return Path(shutil.copytree(trained["corpus"], tmp_path / "moved" / "corpus"))


def test_the_checkpoint_records_what_the_run_read(trained):
    state = torch.load(resume_state_path(trained["out"]), weights_only=True)
    fingerprints = state["fingerprints"]
    names = [name for name, _ in fingerprints["corpus"]]
    assert sorted(names) == sorted(path.name for path in trained["corpus"].iterdir())
    notes = names.index("clinical_mtsamples_notes.txt")
    assert names[notes + 1] == "clinical_mtsamples_notes.specialty"  # the label sidecar right after its text
    assert all(len(digest) == 64 for _, digest in fingerprints["corpus"])
    vocabulary = vocabulary_fingerprint(load_tokenizer(SCIVOCAB))
    assert fingerprints["vocabulary"] == vocabulary["vocabulary"]
    assert fingerprints["vocabulary_size"] == vocabulary["vocabulary_size"] == 31090
    assert fingerprints["init_from"] is None
    assert set(fingerprints) == {"corpus", "vocabulary", "vocabulary_size", "init_from"}


def test_a_moved_corpus_and_a_copied_vocab_are_accepted(trained, tmp_path):
    vocab = tmp_path / "elsewhere" / "vocab.txt"
    vocab.parent.mkdir()
    shutil.copyfile(trained["vocab"], vocab)
    config, state = resume(moved_corpus(trained, tmp_path), vocab, trained["out"])
    assert state["round"] == 1
    check_resume_vocabulary(config, state, load_tokenizer(vocab))  # run.py's check once the session is built


def test_a_changed_corpus_file_is_refused_with_one_line_by_the_launcher(trained, tmp_path):
    corpus = moved_corpus(trained, tmp_path)
    with open(corpus / "pubmed_hoc_abstracts.txt", "a", encoding="utf-8") as stream:
        stream.write("one more abstract about a protein kinase .\n")
    before = sorted((path, path.stat().st_mtime_ns) for path in trained["out"].rglob("*"))
    result = fedbiobert_run(["--nproc_per_node", "2", *run_args(corpus, trained["vocab"], trained["out"]),
                             "--cache_dir", str(tmp_path / "cache"), "--from_checkpoint", "True"], timeout=120)
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr.splitlines() == [
        f"fedbiobert-run: error: checkpoint '{trained['out']}/checkpoint/state.pt' was trained on another corpus "
        f"than --data_dir '{corpus}' gives: its file 'pubmed_hoc_abstracts.txt' has other content now "
        "(accepted: the same corpus files, by name and content, wherever --data_dir puts them; or move the "
        "checkpoint away to start over)"]
    assert sorted((path, path.stat().st_mtime_ns) for path in trained["out"].rglob("*")) == before
    assert not (tmp_path / "cache").exists()  # refused before any tokenization


def test_a_missing_corpus_file_is_named(trained, tmp_path):
    corpus = moved_corpus(trained, tmp_path)
    (corpus / "pubmedqa_contexts.txt").unlink()
    with pytest.raises(ConfigError, match=r"another corpus than --data_dir '.*' gives: its file "
                                          r"'pubmedqa_contexts.txt' is missing now \(accepted: "):
        resume(corpus, trained["vocab"], trained["out"])


@pytest.mark.parametrize("edit,detail", [
    (lambda tokens: tokens[:1000] + [tokens[1001], tokens[1000]] + tokens[1002:],
     "31090 tokens as before, but other tokens or other ids"),
    (lambda tokens: tokens + ["newtoken"], "31090 tokens then, 31091 now"),
], ids=["two-ids-swapped", "one-token-added"])
def test_another_vocabulary_is_refused(trained, tmp_path, edit, detail):
    tokens = SCIVOCAB.read_text(encoding="utf-8").split("\n")[:-1]
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(edit(tokens)) + "\n", encoding="utf-8")
    with pytest.raises(ConfigError) as refused:
        resume(trained["corpus"], vocab, trained["out"])
    assert str(refused.value) == (
        f"checkpoint '{trained['out']}/checkpoint/state.pt' was trained with another vocabulary than --tokenizer "
        f"'{vocab}' holds ({detail}) (accepted: the same token -> id mapping, wherever its file lives; or move "
        "the checkpoint away to start over)")
    # the same refusal after the session is built (a tokenizer trained on the corpus is known only then)
    config, state = resume(trained["corpus"], trained["vocab"], trained["out"])
    with pytest.raises(ValueError, match=f"another vocabulary than --tokenizer '{trained['vocab']}' holds"):
        check_resume_vocabulary(config, state, load_tokenizer(vocab))


def test_another_corpus_selection_is_refused(trained):
    with pytest.raises(ConfigError, match="was trained with --tot_files None, but this run has --tot_files 3"):
        resume(trained["corpus"], trained["vocab"], trained["out"], "--tot_files", "3")
    with pytest.raises(ConfigError, match="was trained with --data None, but this run has --data pubmed"):
        resume(trained["corpus"], trained["vocab"], trained["out"], "--data", "pubmed")


def test_fl_aggregate_is_compared_by_what_it_does(trained):
    same = "scheme=fedavg,weighting=samples"  # the default, written otherwise
    assert resume(trained["corpus"], trained["vocab"], trained["out"], "--fl_aggregate", same)[1]["round"] == 1
    with pytest.raises(ConfigError, match="was trained with --fl_aggregate scheme=federated_average, but this run "
                                          "has --fl_aggregate scheme=federated_average,weighting=uniform"):
        resume(trained["corpus"], trained["vocab"], trained["out"], "--fl_aggregate",
               "scheme=federated_average,weighting=uniform")


def test_a_checkpoint_without_fingerprints_is_accepted_with_a_warning(trained, tmp_path, caplog):
    out = Path(shutil.copytree(trained["out"], tmp_path / "out"))
    state = torch.load(resume_state_path(out), weights_only=True)
    del state["fingerprints"]
    resume_state_path(out).unlink()  # a hard link to round1.pt: replace it, not the file it shares
    torch.save(state, resume_state_path(out))
    with caplog.at_level(logging.WARNING, logger="fedbiobert.checkpoint"):
        config, loaded = resume(moved_corpus(trained, tmp_path), trained["vocab"], out)
    assert loaded["round"] == 1 and "fingerprints" not in loaded
    assert f"checkpoint '{out}/checkpoint/state.pt' predates content fingerprints" in caplog.text
    check_resume_vocabulary(config, loaded, load_tokenizer(SCIVOCAB))  # nothing to compare: no error


def tiny_model_folder(folder: Path, intermediate_size: int = 64) -> str:
    config = BertConfig(vocab_size=300, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=intermediate_size, max_position_embeddings=64)
    BertForMaskedLM(config).save_pretrained(folder)
    return str(folder)


def test_init_from_is_compared_by_its_content(tmp_path):
    model = tiny_model_folder(tmp_path / "model")
    moved = str(shutil.copytree(model, tmp_path / "moved" / "model"))
    other = tiny_model_folder(tmp_path / "other", intermediate_size=128)
    assert model_fingerprint(moved) == model_fingerprint(model) != model_fingerprint(other)
    assert model_fingerprint(None) is None
    path = Path("out/checkpoint/state.pt")

    def check(saved: str | None, now: str | None) -> None:
        config = type("Config", (), {"init_from": now})
        check_fingerprints(path, {"init_from": model_fingerprint(saved)}, {"init_from": model_fingerprint(now)},
                           config)

    check(model, moved)
    with pytest.raises(ValueError, match=rf"was trained from another --init_from model than '{other}' \(its "
                                         r"config.json or weight files differ\) \(accepted: the model folder it "
                                         r"started from, wherever it lives; or move"):
        check(model, other)
    with pytest.raises(ValueError, match=f"was trained from random weights, but this run has --init_from '{model}'"):
        check(None, model)
    with pytest.raises(ValueError, match="was trained from an --init_from model, but this run has no --init_from"):
        check(model, None)

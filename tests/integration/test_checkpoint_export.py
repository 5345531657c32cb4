"""Round exports and round states on disk: what an export holds, its file modes, the atomic swap of a
re-written round, --keep_exports pruning, and the RoBERTa report's decoded mask predictions."""
from __future__ import annotations

import os
import stat

import pytest
import torch

from fedbiobert import atomic
from fedbiobert.checkpoint import (export_round, prune_rounds, resume_state_path, round_dir,
                                   save_resume_state)
from fedbiobert.data.tokenizer import build_tokenizer
from fedbiobert.model import ModelSpec, build_full_model
from fedbiobert.report import fill_mask
from tests.conftest import copy_head


@pytest.fixture(scope="module")
def roberta(tmp_path_factory):
    """A tiny random RoBERTa and a byte-level BPE tokenizer trained on a slice of real text."""
    folder = tmp_path_factory.mktemp("roberta")
    text = copy_head("pubmed_genia_abstracts.txt", folder / "genia.txt", 60)
    tokenizer = build_tokenizer("roberta", None, [text], folder / "cache", vocab_size=400)
    spec = ModelSpec("roberta", len(tokenizer), 16, 2, 32, 1, 32, tokenizer.pad_token_id)
    return build_full_model(spec, seed=0), tokenizer


def modes(folder):
    return {path.name: stat.S_IMODE(path.stat().st_mode) for path in folder.iterdir()}


def test_export_is_a_plain_model_folder_with_one_file_mode(roberta, tmp_path):
    model, tokenizer = roberta
    umask = os.umask(0o022)
    try:
        folder = export_round(tmp_path, 1, model, tokenizer)
    finally:
        os.umask(umask)
    assert folder == round_dir(tmp_path, 1)
    assert "model.safetensors" in modes(folder) and "training_state.pt" not in modes(folder)
    assert set(modes(folder).values()) == {0o644}, modes(folder)  # safetensors alone would be 0600
    assert sorted(path.name for path in tmp_path.iterdir()) == ["round1"]  # no .tmp left behind


def test_rewritten_round_is_swapped_in_after_the_old_one_is_set_aside(roberta, tmp_path, monkeypatch):
    model, tokenizer = roberta
    export_round(tmp_path, 2, model, tokenizer)
    (round_dir(tmp_path, 2) / "marker").write_text("old")
    renames, synced = [], []
    real_replace = os.replace

    def recording_replace(source, target):
        renames.append((os.path.basename(source), os.path.basename(target)))
        real_replace(source, target)

    monkeypatch.setattr(atomic.os, "replace", recording_replace)
    monkeypatch.setattr(atomic, "fsync_dir", lambda path: synced.append(path.name))
    export_round(tmp_path, 2, model, tokenizer)
    (aside, old), (staging, new) = renames
    assert (aside, old, new) == ("round2", f"round2.old{os.getpid()}", "round2")
    assert staging.startswith(".round2.") and staging.endswith(".tmp")  # filled beside it, then renamed
    assert synced[-1] == tmp_path.name  # the folder holding round2 is fsynced after the swap
    assert not (round_dir(tmp_path, 2) / "marker").exists()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["round2"]  # the old one deleted last


def test_a_failed_export_leaves_the_previous_one_in_place(roberta, tmp_path, monkeypatch):
    model, tokenizer = roberta
    export_round(tmp_path, 1, model, tokenizer)
    before = modes(round_dir(tmp_path, 1))

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(tokenizer, "save_pretrained", crash)
    with pytest.raises(OSError, match="disk full"):
        export_round(tmp_path, 1, model, tokenizer)
    assert modes(round_dir(tmp_path, 1)) == before
    assert sorted(path.name for path in tmp_path.iterdir()) == ["round1"]  # the half-written one is gone


def test_round_states_live_beside_the_checkpoint_and_share_its_bytes(tmp_path):
    for round_number in (1, 2):
        save_resume_state(tmp_path, {"round": round_number, "tensor": torch.ones(3) * round_number})
    latest, second = resume_state_path(tmp_path), resume_state_path(tmp_path, 2)
    assert second == tmp_path / "checkpoint" / "round2.pt"
    assert os.path.samefile(latest, second)  # a hard link: the latest state costs no second copy
    assert torch.load(resume_state_path(tmp_path, 1))["round"] == 1
    assert torch.load(latest)["round"] == 2


def test_keep_exports_deletes_older_rounds_and_their_states(tmp_path):
    for round_number in range(1, 5):
        round_dir(tmp_path, round_number).mkdir(parents=True)
        save_resume_state(tmp_path, {"round": round_number})
    assert prune_rounds(tmp_path, 4, None) == []
    assert prune_rounds(tmp_path, 4, 2) == [1, 2]
    assert sorted(path.name for path in tmp_path.glob("round*")) == ["round3", "round4"]
    assert sorted(path.name for path in (tmp_path / "checkpoint").iterdir()) == ["round3.pt", "round4.pt", "state.pt"]
    assert torch.load(resume_state_path(tmp_path))["round"] == 4


def test_roberta_report_shows_decoded_tokens(roberta, tmp_path):
    model, tokenizer = roberta
    target = tokenizer.convert_tokens_to_ids("Ġthe")
    assert target != tokenizer.unk_token_id
    with torch.no_grad():  # make ' the' (byte-level 'Ġthe') the certain top prediction
        model.get_output_embeddings().bias[target] += 1000.0
    folder = export_round(tmp_path, 1, model, tokenizer)
    predictions = fill_mask(folder, "the patient was given [MASK] drug .")
    assert predictions[0] == "the"
    assert not any("Ġ" in token for token in predictions), predictions

"""Round checkpoints (resume) and round exports (standard HF models), written atomically.

Layout in `--output_dir`:

    checkpoint/state.pt          everything needed to resume after the last complete round
    checkpoint/round{k}.pt       the same after round k (--from_checkpoint_round k); state.pt is a hard
                                 link to the latest, so the two take the disk space of one
    round{k}/                    HF `save_pretrained` export of the joined model + tokenizer after
                                 round k: a plain model folder, no training state

A resume state is a single file written as `*.tmp` then renamed over the old one (os.replace is
atomic on POSIX), so a crash mid-write leaves the previous checkpoint intact. A round folder is
written under a temporary name and swapped in when complete (the old folder is renamed aside first
and deleted last, so there is always a complete round{k}/). `--keep_exports N` deletes the exports and
round states of rounds before the last N. Every file gets the same permissions (0666 less the umask).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import pickle
import re
import shutil
import zipfile
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)

# 2: tensors and plain data only (loadable with weights_only=True), cumulative run_seconds.
STATE_FORMAT = 2
STATE_FILE = "state.pt"
# Options that must match between the run that wrote a checkpoint and the run resuming from it: each
# changes the model's shape, which data each silo holds, which silos are sampled, or what the
# validation loss measures, so a resumed run with another value would silently be a different run.
RESUME_MUST_MATCH = (
    "algorithm", "arch", "num_client_encoder", "num_server_encoder", "head_placement", "server_output",
    "hidden_size", "num_attention_heads", "intermediate_size", "vocab_size", "tokenizer", "max_len",
    "n_clients", "participation_ratio", "num_servers", "fedavg_embedding_head", "fedavg_server_model",
    "manual_seed", "client_seeds", "partition_data", "dirichlet_alpha", "label_suffix",
    "val_ratio", "val_blocks", "mlm_probability",
)
# Not --precision: master weights are fp32 in every precision, so a checkpoint means the same whatever
# the compute dtype that trained it (a run may resume in another precision; see fedbiobert/precision.py).
# Options that may change on resume but change the learning-rate schedule: a warning, not an error.
RESUME_SHOULD_MATCH = ("n_comm_rounds", "n_local_rounds", "num_batch", "lr", "end_lr", "warmup_ratio")
# Everything else may change on resume without a word: where the data lives (--data_dir: the token
# cache is keyed by content, so moved files give the same blocks), devices and transport
# (--on_cuda, --gpu_ids, --comm_timeout, the emulated link), output and logging options, --batch_size
# and the optimizer's other settings (a legitimate change of the training recipe).


def round_dir(output_dir: str | Path, round_number: int) -> Path:
    return Path(output_dir) / f"round{round_number}"


def resume_state_path(output_dir: str | Path, round_number: int | None = None) -> Path:
    if round_number is None:
        return Path(output_dir) / "checkpoint" / STATE_FILE
    return Path(output_dir) / "checkpoint" / f"round{round_number}.pt"


def atomic_torch_save(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + f".tmp{os.getpid()}")
    torch.save(obj, temporary)
    with open(temporary, "rb") as stream:
        os.fsync(stream.fileno())
    os.replace(temporary, path)
    fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    """Make a rename in `path` durable (POSIX: the directory entry lives in the directory's own data)."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def save_resume_state(output_dir: str | Path, state: dict[str, Any]) -> Path:
    """checkpoint/round{k}.pt, then checkpoint/state.pt as a hard link to it (a copy where links fail)."""
    round_path = resume_state_path(output_dir, state["round"])
    atomic_torch_save({"format": STATE_FORMAT, **state}, round_path)
    path = resume_state_path(output_dir)
    temporary = path.with_name(path.name + f".tmp{os.getpid()}")
    temporary.unlink(missing_ok=True)
    try:
        os.link(round_path, temporary)
    except OSError:
        shutil.copyfile(round_path, temporary)
    os.replace(temporary, path)
    fsync_dir(path.parent)
    logger.info("checkpoint of round %d written to %s", state["round"], path)
    return path


def load_resume_for(config) -> dict | None:
    """The state a run resumes from (every rank reads it itself), or None for a fresh run."""
    if not (config.from_checkpoint or config.from_checkpoint_round is not None):
        return None
    return load_resume_state(config.output_dir, config.from_checkpoint_round, config_record(config))


def config_record(config) -> dict[str, Any]:
    """The options a checkpoint records (and a resume compares): every option, plus the resolved
    number of server processes (--num_device may be left to its per-algorithm default)."""
    return {**dataclasses.asdict(config), "num_servers": config.num_servers}


def load_resume_state(output_dir: str | Path, round_number: int | None, config_values: dict[str, Any]) -> dict:
    """Load and check a resume state. ValueError naming the file if it is corrupt or incompatible."""
    path = resume_state_path(output_dir, round_number)
    accepted = "(accepted: a state written by a FedBioBERT run; move it away to start over)"
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive; its index is at the very end
        raise ValueError(f"checkpoint '{path}' is damaged: {path.stat().st_size} bytes that are not a complete "
                         f"torch.save archive (truncated or overwritten?) {accepted}")
    state = _load_plain_state(path, accepted)
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise ValueError(f"checkpoint '{path}' is not a FedBioBERT state of format {STATE_FORMAT} {accepted}")
    for key in RESUME_MUST_MATCH:
        saved = state["config"].get(key)
        if saved != config_values[key]:
            raise ValueError(f"checkpoint '{path}' was trained with --{key} {saved}, but this run has --{key} "
                             f"{config_values[key]} (accepted: the same value; it shapes the model, the silos' "
                             "data or the validation set)")
    for key in RESUME_SHOULD_MATCH:
        if state["config"].get(key) != config_values[key]:
            logger.warning("resuming with --%s %s (checkpoint: %s): the learning-rate schedule changes",
                           key, config_values[key], state["config"].get(key))
    if state["round"] >= config_values["n_comm_rounds"]:
        raise ValueError(f"checkpoint '{path}' already completed round {state['round']} of --n_comm_rounds "
                         f"{config_values['n_comm_rounds']}: nothing left to train (raise --n_comm_rounds)")
    return state


def _load_plain_state(path: Path, accepted: str) -> Any:
    """torch.load with weights_only=True: tensors and plain containers only. A pickle that names
    any other object (a crafted state.pt can run arbitrary code on load) is refused before anything
    in it is executed."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as error:
        found = re.search(r"GLOBAL ([\w.]+)", str(error))
        what = f" ({found.group(1)})" if found else ""
        raise ValueError(f"checkpoint '{path}' holds objects other than tensors and plain data{what}: refused "
                         f"without loading it, since loading it could run code {accepted}") from None
    except Exception as error:  # torch raises many kinds for a damaged file
        raise ValueError(f"checkpoint '{path}' is unreadable ({type(error).__name__}: "
                         f"{str(error).splitlines()[0][:120]}) {accepted}") from None


def export_round(output_dir: str | Path, round_number: int, model, tokenizer) -> Path:
    """Write round{k}/: the joined HF model and its tokenizer (the round's resume state is
    checkpoint/round{k}.pt, written by save_resume_state)."""
    final = round_dir(output_dir, round_number)
    temporary = final.with_name(final.name + f".tmp{os.getpid()}")
    shutil.rmtree(temporary, ignore_errors=True)
    model.save_pretrained(temporary)
    tokenizer.save_pretrained(temporary)
    _set_default_modes(temporary)
    _swap_in(temporary, final)
    return final


def _swap_in(temporary: Path, final: Path) -> None:
    """Put the complete folder `temporary` at `final`. An old `final` (a round re-run after a resume) is
    renamed aside first and deleted only once the new one is in place: a crash at any point leaves a
    complete round folder at `final`, or under its `.old` name, never neither."""
    for path in temporary.iterdir():
        if path.is_file():
            with open(path, "rb") as stream:
                os.fsync(stream.fileno())
    fsync_dir(temporary)
    aside = final.with_name(final.name + f".old{os.getpid()}")
    if final.exists():
        os.replace(final, aside)
    os.replace(temporary, final)
    fsync_dir(final.parent)
    shutil.rmtree(aside, ignore_errors=True)


def _set_default_modes(folder: Path) -> None:
    """Give every file of an export the mode a plain open() would (0666 less the umask): safetensors
    writes model.safetensors 0600 while the tokenizer files get 0644."""
    umask = os.umask(0)
    os.umask(umask)
    for path in folder.iterdir():
        if path.is_file():
            path.chmod(0o666 & ~umask)


def prune_rounds(output_dir: str | Path, latest_round: int, keep: int | None) -> list[int]:
    """--keep_exports: delete round{k}/ and checkpoint/round{k}.pt for k <= latest_round - keep.
    Returns the rounds deleted."""
    if keep is None:
        return []
    deleted = []
    for round_number in range(1, latest_round - keep + 1):
        export, state = round_dir(output_dir, round_number), resume_state_path(output_dir, round_number)
        if export.exists() or state.exists():
            shutil.rmtree(export, ignore_errors=True)
            state.unlink(missing_ok=True)
            deleted.append(round_number)
    return deleted


def prepare_output_dir(config) -> None:
    """Rank 0, before training: create the output dir and write the resolved config.json."""
    output = Path(config.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    path = output / "config.json"
    temporary = path.with_name("config.json.tmp")
    temporary.write_text(json.dumps(dataclasses.asdict(config), indent=2, sort_keys=True), encoding="utf-8")
    os.replace(temporary, path)


def has_checkpoint(output_dir: str | Path) -> bool:
    return resume_state_path(output_dir).is_file()

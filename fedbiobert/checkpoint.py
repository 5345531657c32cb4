"""Round checkpoints (resume) and round exports (standard HF models), written atomically.

Layout in `--output_dir`:

    checkpoint/state.pt          everything needed to resume after the last complete round
    round{k}/                    HF `save_pretrained` export of the joined model + tokenizer after
                                 round k, plus training_state.pt (resume from exactly that round)

A resume state is a single file written as `*.tmp` then renamed over the old one (os.replace is
atomic on POSIX), so a crash mid-write leaves the previous checkpoint intact. A round folder is
written under a temporary name and renamed into place when complete.
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
ROUND_STATE_FILE = "training_state.pt"
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
    return round_dir(output_dir, round_number) / ROUND_STATE_FILE


def atomic_torch_save(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + f".tmp{os.getpid()}")
    torch.save(obj, temporary)
    with open(temporary, "rb") as stream:
        os.fsync(stream.fileno())
    os.replace(temporary, path)


def save_resume_state(output_dir: str | Path, state: dict[str, Any]) -> Path:
    path = resume_state_path(output_dir)
    atomic_torch_save({"format": STATE_FORMAT, **state}, path)
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


def export_round(output_dir: str | Path, round_number: int, model, tokenizer, state: dict[str, Any]) -> Path:
    """Write round{k}/: the joined HF model, its tokenizer and the round's resume state."""
    final = round_dir(output_dir, round_number)
    temporary = final.with_name(final.name + f".tmp{os.getpid()}")
    shutil.rmtree(temporary, ignore_errors=True)
    model.save_pretrained(temporary)
    tokenizer.save_pretrained(temporary)
    torch.save({"format": STATE_FORMAT, **state}, temporary / ROUND_STATE_FILE)
    if final.exists():  # re-running a round after a resume: the new export replaces the old
        shutil.rmtree(final)
    os.replace(temporary, final)
    return final


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

"""Builders of wrong inputs for the bad-input catalogue (tests/processes/test_bad_inputs.py): each makes
a real file, folder, checkpoint or vocabulary in a tmp path and returns the options that point at it."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from fedbiobert.checkpoint import STATE_FORMAT, config_record
from fedbiobert.config import parse_config
from tests.support.launch import TINY_MODEL

BASE = [*TINY_MODEL, "--num_client_encoder", "1", "--num_server_encoder", "1", "--n_clients", "2",
        "--n_comm_rounds", "1", "--num_batch", "2"]
GOOD_LINES = "the patient was given aspirin for chest pain .\nbiopsy showed no malignancy .\n"


@dataclass(frozen=True)
class Bad:
    """One wrong input: `make(tmp, corpus)` builds it and returns the flags that give it to the run;
    `fragment` (with {tmp} for tmp_path) must be in the one error line."""
    make: Callable[[Path, Path], list[str]]
    fragment: str
    torchrun: bool = False  # the real command on `world` processes, else run.main in-process
    world: int = 3
    late: bool = False      # found after start-up: an ERROR log line instead of "run.py: error:"
    slow_rank0: bool = False  # local rank 0 starts 3 s late: the other ranks meet the error first


def files(tmp: Path, name: str, contents: dict[str, str | bytes]) -> Path:
    """A folder tmp/name holding the given files (str written as UTF-8, bytes as they are)."""
    folder = tmp / name
    folder.mkdir(parents=True, exist_ok=True)
    for file_name, content in contents.items():
        data = content.encode("utf-8") if isinstance(content, str) else content
        (folder / file_name).write_bytes(data)
    return folder


def data(tmp: Path, contents: dict[str, str | bytes]) -> list[str]:
    return ["--data_dir", str(files(tmp, "data", contents))]


def config_file(tmp: Path, name: str, text: str) -> list[str]:
    return ["--config", str(files(tmp, "conf", {name: text}) / name)]


def checkpoint(tmp: Path, content: bytes | dict) -> list[str]:
    """An existing --output_dir holding checkpoint/state.pt (raw bytes, or a state saved by torch)."""
    path = tmp / "out" / "checkpoint" / "state.pt"
    path.parent.mkdir(parents=True)
    if isinstance(content, dict):
        torch.save(content, path)
    else:
        path.write_bytes(content)
    return ["--from_checkpoint", "True"]


def state(round_number: int = 1, **config_overrides) -> dict:
    """A FedBioBERT resume state (the fields load_resume_state reads) of a run with BASE's options."""
    values = config_record(parse_config(BASE))
    return {"format": STATE_FORMAT, "round": round_number, "config": {**values, **config_overrides}}


class RunsAShellCommand:
    """Pickles as a call of os.system: what a crafted state.pt does when loaded with weights_only=False."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def crafted_checkpoint(tmp: Path) -> list[str]:
    return checkpoint(tmp, {**state(), "client_state": RunsAShellCommand(f"touch {tmp}/pwned")})


def mismatch(option: str, value, ours) -> Bad:
    return Bad(lambda t, c: checkpoint(t, state(**{option: value})),
               f"was trained with --{option} {value}, but this run has --{option} {ours}")


def truncated_checkpoint() -> bytes:
    import io
    buffer = io.BytesIO()
    torch.save(state(), buffer)
    return buffer.getvalue()[:-100]  # the zip index at the end is gone, as after a crash mid-copy


def model_folder(tmp: Path, layers: int) -> list[str]:
    folder = files(tmp, "model", {"config.json": json.dumps({"model_type": "bert", "num_hidden_layers": layers})})
    return ["--init_from", str(folder)]


def warm_folder(tmp: Path, **overrides) -> list[str]:
    """An HF folder's config.json (BASE's shape unless overridden) and its own vocab.txt."""
    config = {"model_type": "bert", "num_hidden_layers": 2, "hidden_size": 32, "num_attention_heads": 2,
              "intermediate_size": 64, "vocab_size": 1500, "max_position_embeddings": 512, **overrides}
    folder = files(tmp, "warm", {"config.json": json.dumps(config), "vocab.txt": "\n".join(SPECIALS + WORDS)})
    return ["--init_from", str(folder)]


def vocab(tmp: Path, tokens: list[str], encoding: str = "utf-8") -> list[str]:
    path = files(tmp, "tok", {"vocab.txt": "\n".join(tokens).encode(encoding)}) / "vocab.txt"
    return ["--tokenizer", str(path)]


def a_file(tmp: Path, name: str = "afile") -> Path:
    path = tmp / name
    path.write_text("not a folder\n")
    return path


def fifo(tmp: Path) -> list[str]:
    path = tmp / "pipe.txt"
    os.mkfifo(path)
    return ["--data_dir", str(path)]


def unreadable(tmp: Path) -> list[str]:
    args = data(tmp, {"good.txt": GOOD_LINES, "secret.txt": GOOD_LINES})
    (tmp / "data" / "secret.txt").chmod(0)
    return args


SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = ["the", "patient", "was", "given", "aspirin", "."]
TINY_TEXT = "the patient was given aspirin .\n" * 3  # one packed block: too few for 4 clients
ROOT = os.geteuid() == 0

"""Bad input: a catalogue of wrong inputs, each built for real in tmp_path. Every one must fail before any
training with ONE clear line naming the value (`run.py: error: ...`, or one ERROR log line for what can only
be found after start-up), no Python traceback from our processes, and no partial output.

Cases marked `torchrun` run the real command on real processes; the others call `fedbiobert.run.main(argv)` in this
process with the environment of a torchrun world (RANK, WORLD_SIZE, ...): the same code path up to the
point where the process group would form, which these inputs never reach (forming it fails the test).
"""
from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import pytest
import torch

from tests.support.bad_inputs import (BASE, Bad, GOOD_LINES, ROOT, SPECIALS, TINY_TEXT, WORDS, a_file, checkpoint,
                                      config_file, crafted_checkpoint, data, fifo, files, mismatch, model_folder,
                                      state, truncated_checkpoint, unreadable, vocab, warm_folder)
from tests.support.launch import torchrun


CATALOGUE = {
    # --- data ------------------------------------------------------------------------------------------
    "data_dir missing": Bad(lambda t, c: ["--data_dir", str(t / "missing")], "data_dir '{tmp}/missing' does not exist"),
    "data_dir empty folder": Bad(lambda t, c: data(t, {}), "data_dir '{tmp}/data' contains no .txt or .jsonl files"),
    "data_dir of non-text files": Bad(lambda t, c: data(t, {"notes.csv": "a,b\n", "scan.pdf": b"%PDF-1.4"}),
                                      "data_dir '{tmp}/data' contains no .txt or .jsonl files"),
    "data_dir a .csv file": Bad(lambda t, c: ["--data_dir", str(files(t, "d", {"notes.csv": "a,b\n"}) / "notes.csv")],
                                "data_dir '{tmp}/d/notes.csv' is not a .txt or .jsonl file"),
    "data_dir a fifo": Bad(lambda t, c: fifo(t), "data_dir '{tmp}/pipe.txt' is neither a file nor a folder"),
    "corpus files all empty": Bad(lambda t, c: data(t, {"a.txt": "", "b.jsonl": "\n  \n"}),
                                  "data_dir '{tmp}/data': every corpus file is empty"),
    "corpus file binary (NUL bytes)": Bad(
        lambda t, c: data(t, {"good.txt": GOOD_LINES, "blob.txt": b"first line\nsecond \x00\x01\x02 line\n"}),
        "corpus file '{tmp}/data/blob.txt' looks binary: NUL byte at offset 18 (line 2)", torchrun=True),
    "corpus file latin-1": Bad(
        lambda t, c: data(t, {"good.txt": GOOD_LINES, "latin1.txt": "first line\nna\u00efve\n".encode("latin-1")}),
        "corpus file '{tmp}/data/latin1.txt' is not valid UTF-8: byte offset 13 (line 2)"),
    "corpus file unreadable": pytest.param(
        Bad(lambda t, c: unreadable(t), "corpus file '{tmp}/data/secret.txt' cannot be read (Permission denied)"),
        marks=pytest.mark.skipif(ROOT, reason="root reads any file")),
    "jsonl line without text": Bad(lambda t, c: data(t, {"a.jsonl": '{"text": "fine"}\n{"title": "no text"}\n'}),
                                   "corpus file '{tmp}/data/a.jsonl' line 2 has no string \"text\" field"),
    "jsonl line not JSON": Bad(lambda t, c: data(t, {"a.jsonl": '{"text": "fine"}\n\n{"text": oops\n'}),
                               "corpus file '{tmp}/data/a.jsonl' line 3 is not valid JSON"),
    "label sidecar of the wrong length": Bad(
        lambda t, c: data(t, {"notes.txt": GOOD_LINES + "third note\n", "notes.specialty": "Cardiology\nSurgery\n"}),
        "sidecar '{tmp}/data/notes.specialty' has 2 lines but '{tmp}/data/notes.txt' has 3"),
    "more clients than packed blocks": Bad(
        lambda t, c: [*data(t, {"tiny.txt": TINY_TEXT}), "--n_clients", "4"],
        "scheme 'by_file' cannot give 4 clients a block each from 1 training blocks", torchrun=True, late=True),
    # --- tokenizer -------------------------------------------------------------------------------------
    "vocab without [MASK]": Bad(lambda t, c: vocab(t, [s for s in SPECIALS if s != "[MASK]"] + WORDS),
                                "vocab file '{tmp}/tok/vocab.txt' lacks special token(s) [MASK]", torchrun=True,
                                world=2),
    "vocab latin-1": Bad(lambda t, c: vocab(t, SPECIALS + ["na\u00efve"], "latin-1"),
                         "vocab file '{tmp}/tok/vocab.txt' is not valid UTF-8"),
    "tokenizer missing": Bad(lambda t, c: ["--tokenizer", str(t / "nope")],
                             "tokenizer_path '{tmp}/nope' does not exist"),
    "vocab_size too small to train": Bad(lambda t, c: ["--vocab_size", "100"], "--vocab_size 100 is too small"),
    # --- model and checkpoints --------------------------------------------------------------------------
    "init_from with other layers": Bad(lambda t, c: model_folder(t, 12),
                                       "= 2 layers, but --init_from '{tmp}/model' has 12"),
    "init_from of another architecture": Bad(lambda t, c: warm_folder(t, model_type="gpt2"),
                                             "--arch bert but --init_from '{tmp}/warm' is a 'gpt2' model"),
    "init_from with another tokenizer": Bad(lambda t, c: warm_folder(t) + vocab(t, SPECIALS + WORDS[::-1]),
                                            "--tokenizer '{tmp}/tok/vocab.txt' has another vocabulary than "
                                            "--init_from '{tmp}/warm'"),
    "max_len beyond the checkpoint's positions": Bad(lambda t, c: warm_folder(t, max_position_embeddings=32),
                                                     "--max_len 64 exceeds the 32 positions of --init_from"),
    "shape option against the checkpoint": Bad(lambda t, c: warm_folder(t, hidden_size=64),
                                               "--hidden_size 32 contradicts --init_from '{tmp}/warm', whose "
                                               "hidden_size is 64"),
    "checkpoint garbage": Bad(lambda t, c: checkpoint(t, b"garbage, not a checkpoint"),
                              "checkpoint '{tmp}/out/checkpoint/state.pt' is damaged: 25 bytes", torchrun=True,
                              world=2),
    "checkpoint truncated": Bad(lambda t, c: checkpoint(t, truncated_checkpoint()),
                                "checkpoint '{tmp}/out/checkpoint/state.pt' is damaged"),
    "checkpoint with other layers": Bad(lambda t, c: checkpoint(t, state(num_client_encoder=3)),
                                        "was trained with --num_client_encoder 3, but this run has "
                                        "--num_client_encoder 1"),
    "checkpoint with another seed": mismatch("manual_seed", 7, 42),
    "checkpoint with another partition": mismatch("partition_data", "random", "by_file"),
    "checkpoint with another dirichlet alpha": mismatch("dirichlet_alpha", 0.1, 0.5),
    "checkpoint with another validation ratio": mismatch("val_ratio", 0.05, 0.01),
    "checkpoint with another validation size": mismatch("val_blocks", 64, 512),
    "checkpoint with other corpus files": mismatch("tot_files", 2, None),
    "checkpoint with another vocabulary size": mismatch("vocab_size", 999, 1500),
    "checkpoint with other heads": mismatch("num_attention_heads", 4, 2),
    "checkpoint with another intermediate size": mismatch("intermediate_size", 128, 64),
    "checkpoint with another participation": mismatch("participation_ratio", 0.5, 1.0),
    "checkpoint with another server count": mismatch("num_servers", 2, 1),
    "checkpoint crafted to run code": Bad(lambda t, c: crafted_checkpoint(t),
                                          "holds objects other than tensors and plain data (posix.system): refused"),
    "checkpoint already complete": Bad(lambda t, c: checkpoint(t, state(round_number=1)),
                                       "already completed round 1 of --n_comm_rounds 1"),
    "resume without a checkpoint": Bad(lambda t, c: (t / "out").mkdir() or ["--from_checkpoint", "True"],
                                       "cannot resume: '{tmp}/out/checkpoint/state.pt' does not exist"),
    "fresh run over a trained one": Bad(lambda t, c: checkpoint(t, state())[:0],
                                        "--output_dir '{tmp}/out' already holds a trained run"),
    # --- output ----------------------------------------------------------------------------------------
    "output_dir is a file": Bad(lambda t, c: ["--output_dir", str(a_file(t, "out"))],
                                "--output_dir '{tmp}/out' exists and is not a directory"),
    "output_dir inside a file": Bad(lambda t, c: ["--output_dir", str(a_file(t) / "run")],
                                    "--output_dir '{tmp}/afile/run' cannot be created: '{tmp}/afile' is a file"),
    "cache_dir is a file": Bad(lambda t, c: ["--cache_dir", str(a_file(t, "cache"))],
                               "--cache_dir '{tmp}/cache' exists and is not a directory"),
    # --- options ---------------------------------------------------------------------------------------
    "participation_ratio 0": Bad(lambda t, c: ["--participation_ratio", "0"],
                                 "--participation_ratio 0.0 is outside (0, 1]"),
    "participation_ratio 1.5": Bad(lambda t, c: ["--participation_ratio", "1.5"],
                                   "--participation_ratio 1.5 is outside (0, 1]"),
    "hidden_size not divisible by heads": Bad(lambda t, c: ["--hidden_size", "30", "--num_attention_heads", "4"],
                                              "--hidden_size 30 is not divisible by --num_attention_heads 4"),
    "fault of an unknown kind": Bad(lambda t, c: ["--inject_fault", "1:1:crash"],
                                    "--inject_fault '1:1:crash' is not understood (accepted: CLIENT:ROUND:KIND"),
    "fault on a client that does not exist": Bad(lambda t, c: ["--inject_fault", "5:1:error"],
                                                 "--inject_fault names client 5 but --n_clients is 2"),
    "stall without a silo timeout": Bad(lambda t, c: ["--inject_fault", "1:1:stall"],
                                        "--inject_fault 1:ROUND:stall needs --silo_timeout"),
    "server_output with the head on the server": Bad(
        lambda t, c: ["--head_placement", "server", "--server_output", "masked"],
        "--server_output masked applies to split algorithms (fedbiobert, fedbert) with --head_placement client only"),
    "silo_timeout not positive": Bad(lambda t, c: ["--silo_timeout", "0"], "--silo_timeout 0.0 must be positive"),
    "round_timeout not positive": Bad(lambda t, c: ["--round_timeout", "-1"], "--round_timeout -1.0 must be positive"),
    "max_len too small": Bad(lambda t, c: ["--max_len", "4"], "--max_len 4 must be at least 8"),
    "fl_aggregate unknown scheme": Bad(lambda t, c: ["--fl_aggregate", "scheme=median"],
                                       "--fl_aggregate scheme 'median' is not supported"),
    "not an integer": Bad(lambda t, c: ["--n_clients", "two"], "argument --n_clients: invalid int value: 'two'",
                          torchrun=True, world=2),
    "unknown flag": Bad(lambda t, c: ["--no_such_flag", "1"], "unrecognized arguments: --no_such_flag 1"),
    "keep_exports 0": Bad(lambda t, c: ["--keep_exports", "0"], "--keep_exports 0 must be at least 1"),
    "server_schedule unknown": Bad(lambda t, c: ["--server_schedule", "round_robin"],
                                   "argument --server_schedule: invalid choice: 'round_robin'"),
    "centralized with several clients": Bad(lambda t, c: ["--algorithm", "centralized"],
                                            "--n_clients 2 must be 1 for --algorithm centralized", world=1),
    # --- config file -----------------------------------------------------------------------------------
    "config unknown key": Bad(lambda t, c: config_file(t, "run.yaml", "n_clinets: 8\n"),
                              "has unknown option 'n_clinets'"),
    "config bad suffix": Bad(lambda t, c: config_file(t, "run.json", '{"n_clients": 8}'),
                             "--config '{tmp}/conf/run.json' has suffix '.json'"),
    "config invalid YAML": Bad(lambda t, c: config_file(t, "run.yaml", "n_clients: [2\n"),
                               "--config '{tmp}/conf/run.yaml' cannot be parsed"),
    "config value of the wrong type": Bad(lambda t, c: config_file(t, "run.toml", "n_clients = 'two'\n"),
                                          "sets n_clients to 'two' (accepted: an integer)"),
    "config value not a choice": Bad(lambda t, c: config_file(t, "run.yaml", "arch: gpt2\n"),
                                     "--arch 'gpt2' is not supported (accepted: bert, roberta)"),
    # --- world and devices -----------------------------------------------------------------------------
    "num_device leaves no client": Bad(lambda t, c: ["--num_device", "3"],
                                       "--num_device 3 server processes leave no client process in a world of 3",
                                       torchrun=True, slow_rank0=True),
    "gpu_ids of the wrong length": Bad(lambda t, c: ["--gpu_ids", "0,1"], "--gpu_ids '0,1' has 2 id(s) but 3"),
    "on_cuda without CUDA": pytest.param(
        Bad(lambda t, c: ["--on_cuda", "True"], "--on_cuda True but CUDA is not available"),
        marks=pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is present")),
    "fp16 on CPU": Bad(lambda t, c: ["--precision", "fp16"],
                       "--precision fp16 needs CUDA (--on_cuda True); on CPU use bf16 or fp32"),
    "server_recompute with the head on the server": Bad(
        lambda t, c: ["--server_recompute", "True", "--head_placement", "server"],
        "--server_recompute True applies to --algorithm fedbiobert with --head_placement client"),
    "mmap threshold above glibc's": Bad(lambda t, c: ["--mmap_threshold_mb", "64"],
                                        "--mmap_threshold_mb 64.0 is outside [0, 32]"),
    "malloc trim period below zero": Bad(lambda t, c: ["--malloc_trim_seconds", "-1"],
                                         "--malloc_trim_seconds -1.0 must be 0 (never) or a positive number"),
    "on_cuda with fewer GPUs than processes": pytest.param(
        Bad(lambda t, c: ["--on_cuda", "True"], "--on_cuda True runs 3 processes on this node but it has"),
        marks=pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.device_count() >= 3,
                                 reason="needs CUDA with fewer than 3 GPUs")),
    "n_clients below client processes": Bad(lambda t, c: ["--n_clients", "1"], "2 client processes but --n_clients 1"),
    "centralized on several processes": Bad(lambda t, c: ["--algorithm", "centralized", "--n_clients", "1"],
                                            "--algorithm centralized runs on 1 process, not 3"),
    "fedbert auto schedule, servers that fit no schedule": Bad(
        lambda t, c: ["--algorithm", "fedbert", "--num_device", "2", "--n_clients", "3"],
        "--num_device 2 must be 1 (or launch 4 processes for one server per client process)", world=5),
    "server learning rate zero": Bad(lambda t, c: ["--server_lr", "0"], "--server_lr 0.0 is outside (0, 100]"),
    "server beta2 of one": Bad(lambda t, c: ["--server_beta2", "1"], "--server_beta2 1.0 is outside [0, 1)"),
    "server optimiser where nothing is averaged": Bad(
        lambda t, c: ["--algorithm", "centralized", "--n_clients", "1", "--server_optimizer", "fedadam"],
        "--server_optimizer fedadam steps on averaged parts, and --algorithm centralized averages none", world=1),
    "tied decoders with the head on the server": Bad(
        lambda t, c: ["--tie_decoders", "True", "--head_placement", "server"],
        "--tie_decoders True needs the final MLM head beside the word embeddings"),
    "unknown exchange dtype": Bad(lambda t, c: ["--exchange_dtype", "int4"],
                                  "argument --exchange_dtype: invalid choice: 'int4'"),
    "fedbert parallel schedule, too few servers": Bad(
        lambda t, c: ["--algorithm", "fedbert", "--server_schedule", "parallel"],
        "or use --server_schedule sequential with --num_device 1)"),
}

# torchrun's own report of a failed worker: its agent's glog lines, then its traceback and summary table.
AGENT_LINE = re.compile(r"^[IWE]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ .*torch/distributed/")
LAUNCHER_MARKERS = ("torch.distributed", "ChildFailedError", "error_file", "traceback :", "Root Cause")


def our_lines(stderr: str) -> list[str]:
    """The stderr lines our processes wrote: the launcher's traceback (it opens in <frozen runpy>) and
    everything after it, its agent's log lines and its summary table are left out."""
    lines = stderr.splitlines()
    for index in range(len(lines) - 1):
        if lines[index].startswith("Traceback") and "<frozen runpy>" in lines[index + 1]:
            lines = lines[:index]
            break
    return [line for line in lines if line.strip() and not AGENT_LINE.match(line)
            and not any(marker in line for marker in LAUNCHER_MARKERS)]


def listing(folder: Path) -> list[tuple[str, int, int]] | None:
    """Every path under `folder` with its size and modification time; None when it does not exist."""
    if not folder.exists():
        return None
    if folder.is_file():
        return [(folder.name, folder.stat().st_size, folder.stat().st_mtime_ns)]
    return sorted((str(path.relative_to(folder)), path.stat().st_size, path.stat().st_mtime_ns)
                  for path in folder.rglob("*"))


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture
def restore_logging():
    """run.main sets up the root logger for a process of its own; give pytest its logging back."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


SLOW_RANK_0 = "import os, time\nif os.environ.get('RANK') == '0':\n    time.sleep(3)\n"


def run_in_process(argv: list[str], world: int, monkeypatch, capsys) -> tuple[int, str]:
    """run.main(argv) as rank 0 of a torchrun world of `world` processes on one node."""
    from fedbiobert import run

    def must_not_start(*args, **kwargs):
        raise AssertionError("the bad input passed every check: a process group was about to form")

    for key, value in {"RANK": 0, "LOCAL_RANK": 0, "WORLD_SIZE": world, "LOCAL_WORLD_SIZE": world}.items():
        monkeypatch.setenv(key, str(value))
    monkeypatch.setattr(run, "init_distributed", must_not_start)
    capsys.readouterr()
    try:
        code = run.main(argv)
    except SystemExit as exit_info:
        code = exit_info.code
    return code, capsys.readouterr().err


def check_one_clear_line(stderr: str, fragment: str, late: bool) -> None:
    ours = our_lines(stderr)
    assert not any("Traceback" in line for line in ours), stderr[-4000:]
    errors = [line for line in ours if line.startswith("run.py: error:") or " ERROR " in line]
    assert len(errors) == 1, f"expected one error line, got {errors}\n{stderr[-4000:]}"
    assert fragment in errors[0], f"{fragment!r} not in {errors[0]!r}"
    if late:
        assert re.match(r"^\d\d:\d\d:\d\d \[rank 0 server\] ERROR fedbiobert\.run: server rank 0 failed while "
                        r"starting: ValueError: ", errors[0]), errors[0]
    else:
        assert errors[0].startswith("run.py: error: "), errors[0]


@pytest.mark.parametrize("bad", list(CATALOGUE.values()), ids=list(CATALOGUE))
def test_bad_input_fails_early_with_one_line(bad, tmp_path, small_corpus, cache_dir, monkeypatch, capsys,
                                             restore_logging):
    output = tmp_path / "out"
    flags = bad.make(tmp_path, small_corpus)
    before = listing(output)
    argv = [*BASE, "--data_dir", str(small_corpus), "--output_dir", str(output), *flags]
    if bad.slow_rank0:  # a sitecustomize run by every worker (torchrun's agent has no RANK)
        site = files(tmp_path, "site", {"sitecustomize.py": SLOW_RANK_0})
        monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])))
    if bad.torchrun:
        result = torchrun(bad.world, argv, cache_dir, timeout=180)
        code, stderr = result.returncode, result.stderr
    else:
        code, stderr = run_in_process(["--cache_dir", str(cache_dir), *argv], bad.world, monkeypatch, capsys)
    assert code != 0, stderr[-3000:]
    check_one_clear_line(stderr, bad.fragment.format(tmp=tmp_path), bad.late)
    assert listing(output) == before, "the failed run wrote into --output_dir"


def test_a_crafted_checkpoint_runs_nothing(tmp_path, small_corpus, cache_dir, monkeypatch, capsys, restore_logging):
    """weights_only loading: the pickle's os.system call is refused before it runs (the old
    weights_only=False load ran it: the marker file appeared)."""
    flags = crafted_checkpoint(tmp_path)
    argv = [*BASE, "--data_dir", str(small_corpus), "--output_dir", str(tmp_path / "out"), *flags]
    code, stderr = run_in_process(["--cache_dir", str(cache_dir), *argv], 3, monkeypatch, capsys)
    assert code == 2 and "refused without loading it" in stderr
    assert not (tmp_path / "pwned").exists()


def test_the_catalogue_is_broad():
    assert len(CATALOGUE) >= 18
    real = [bad for bad in CATALOGUE.values() if isinstance(bad, Bad) and bad.torchrun]
    assert len(real) >= 6 and any(bad.late for bad in real)

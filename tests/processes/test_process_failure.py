"""A process killed mid-round: the others exit within the timeout (plus a margin) with a non-zero
status naming the failed rank, the last complete round's checkpoint is intact, and the run resumes."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fedbiobert.metrics import read_events
from fedbiobert.comm.launch_env import free_port
from tests.support.launch import REPO, TINY_MODEL, torchrun

COMM_TIMEOUT = 20
ARGS = [*TINY_MODEL, "--num_client_encoder", "1", "--num_server_encoder", "1", "--n_clients", "2",
        "--n_comm_rounds", "3", "--num_batch", "40", "--comm_timeout", str(COMM_TIMEOUT)]


def _start(args: list[str], log: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "3", "--master_addr",
               "127.0.0.1", "--master_port", str(free_port()), str(REPO / "run.py"), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=log.open("w"))


def _worker_pid(agent_pid: int, rank: int) -> int:
    """The pid of the torchrun worker with RANK=rank (a child of the torchrun agent)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        parent = int(next(line.split()[1] for line in status.splitlines() if line.startswith("PPid:")))
        if parent == agent_pid and f"RANK={rank}".encode() in environ:
            return int(entry.name)
    raise LookupError(f"no worker with RANK={rank} under pid {agent_pid}")


def _wait_for(path: Path, process: subprocess.Popen, timeout: float) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        assert process.poll() is None, "the run ended before the checkpoint appeared"
        assert time.time() < deadline, f"{path} did not appear within {timeout}s"
        time.sleep(0.2)


@pytest.mark.parametrize("victim,role", [(2, "client"), pytest.param(0, "server", marks=pytest.mark.slow)])
def test_killed_process_bounded_exit_intact_checkpoint_and_resume(tmp_path, small_corpus, victim, role):
    output, cache = tmp_path / "out", tmp_path / "cache"
    args = [*ARGS, "--data_dir", str(small_corpus), "--output_dir", str(output), "--cache_dir", str(cache)]
    run = _start(args, tmp_path / "run.log")
    _wait_for(output / "round1", run, timeout=240)  # round 2 (of 40 batches a silo) has just begun
    os.kill(_worker_pid(run.pid, victim), signal.SIGKILL)
    killed_at = time.time()
    run.wait(timeout=COMM_TIMEOUT + 30)
    assert time.time() - killed_at < COMM_TIMEOUT + 30
    assert run.returncode != 0
    log = (tmp_path / "run.log").read_text()
    assert f"rank {victim}" in log or f"rank: {victim}" in log  # ours (PeerError) or torchrun's summary
    state = torch.load(output / "checkpoint" / "state.pt", weights_only=False)  # intact, and the last round kept
    completed = state["round"]
    assert completed in (1, 2) and (output / f"round{completed}").exists()
    assert not (output / f"round{completed + 1}").exists()

    resumed = torchrun(3, [*args, "--from_checkpoint", "True"], cache)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    rounds = [event["round"] for event in read_events(output) if event["event"] == "round"]
    assert rounds == [1, 2, 3]

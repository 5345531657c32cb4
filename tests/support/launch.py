"""Run the real `torchrun ... run.py` command line in a subprocess (what users type)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from fedbiobert.comm.launch_env import free_port

REPO = Path(__file__).resolve().parents[2]
TINY_MODEL = ["--hidden_size", "32", "--num_attention_heads", "2", "--intermediate_size", "64",
              "--vocab_size", "1500", "--max_len", "64", "--batch_size", "4"]


def torchrun(nproc: int, args: list[str], cache_dir: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
               "--master_addr", "127.0.0.1", "--master_port", str(free_port()), str(REPO / "run.py"),
               "--cache_dir", str(cache_dir), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def fedbiobert_run(args: list[str], timeout: float) -> subprocess.CompletedProcess:
    """The `fedbiobert-run` launcher in a subprocess (its console script, or the module without one)."""
    launcher = Path(sys.executable).with_name("fedbiobert-run")
    command = [str(launcher)] if launcher.exists() else [sys.executable, "-m", "fedbiobert.launcher"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([*command, *args], capture_output=True, text=True, timeout=timeout, env=env)

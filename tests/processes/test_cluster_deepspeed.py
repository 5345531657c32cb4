"""The DeepSpeed launcher for real, where the `deepspeed` package is installed (the set-up does not install
it: it is large, pins its own dependencies and compiles ops on first use; tests/unit/test_launch_env.py tests
its environment contract without it): launch/deepspeed.sh with a hostfile starts the tiny run's 3 ranks,
each appended --local_rank=N, and the run finishes as under torchrun."""
import os
import subprocess
import sys

import pytest

from tests.support.cluster import TINY_CORPUS, TINY_RUN, assert_finished
from tests.conftest import slice_corpus
from fedbiobert.comm.launch_env import free_port
from tests.support.launch import REPO

pytest.importorskip("deepspeed", reason="deepspeed is not installed (pip install deepspeed to run this test)")


@pytest.mark.slow
def test_the_tiny_run_under_the_deepspeed_launcher(tmp_path):
    corpus = slice_corpus(tmp_path / "corpus", TINY_CORPUS)
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("localhost slots=3\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DEEPSPEED": f"{sys.executable} -m deepspeed.launcher.runner",
           "DS_ARGS": f"--no_ssh --node_rank 0 --master_addr 127.0.0.1 --master_port {free_port()}",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    output = tmp_path / "out"
    result = subprocess.run(["bash", str(REPO / "launch" / "deepspeed.sh"), "--hostfile", str(hostfile), *TINY_RUN,
                             "--data_dir", str(corpus), "--output_dir", str(output),
                             "--cache_dir", str(tmp_path / "cache")],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-3000:]
    assert "launched by deepspeed: 3 processes, 3 on this node; rank 0 listens at 127.0.0.1:" in log
    assert "'--local_rank=2'" in log and log.count("--local_rank is the launcher's option") == 1
    assert_finished(output)

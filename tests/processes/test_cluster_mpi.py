"""A real `mpirun` (Open MPI from the distribution, installed by scripts/setup_cluster_tools.sh) starts the
tiny run's 3 ranks without torchrun, through launch/mpirun.sh and a hostfile in the form hostfile.example
uses: each rank reads OMPI_COMM_WORLD_*, the ranks meet at the hostfile's first host, and the run
finishes as a torchrun run does. Also: a world that does not fit the options, and mpi4py's agreement on
rank 0's address (what a multi-node mpirun without MASTER_ADDR relies on)."""
import os
import socket
import subprocess
import sys

import pytest

from tests.support.cluster import TINY_CORPUS, TINY_RUN, assert_finished, missing_tools_reason
from tests.conftest import slice_corpus
from tests.support.launch import REPO

pytestmark = pytest.mark.skipif(missing_tools_reason("mpirun") is not None,
                                reason=missing_tools_reason("mpirun") or "")


def mpirun(args: list[str], hostfile, timeout: float) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1",
           "MPIRUN_ARGS": "--oversubscribe"}  # 3 ranks on a machine that may have fewer cores
    env.pop("MASTER_ADDR", None)
    return subprocess.run(["bash", str(REPO / "launch" / "mpirun.sh"), "--hostfile", str(hostfile), *args],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def hostfile(tmp_path_factory):
    path = tmp_path_factory.mktemp("mpi") / "hostfile"
    path.write_text("# the form of hostfile.example, for this machine\nlocalhost slots=3\n")
    return path


def test_the_tiny_run_under_mpirun_with_a_hostfile(tmp_path, hostfile):
    corpus = slice_corpus(tmp_path / "corpus", TINY_CORPUS)
    output = tmp_path / "out"
    result = mpirun([*TINY_RUN, "--hostfile", "hostfile", "--data_dir", str(corpus), "--output_dir", str(output),
                     "--cache_dir", str(tmp_path / "cache")], hostfile, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "launched by openmpi: 3 processes, 3 on this node; rank 0 listens at localhost:" in result.stderr
    assert result.stderr.count("--hostfile is the launcher's option") == 1  # one notice, not one per rank
    assert "torchelastic" not in result.stderr.lower()
    assert_finished(output)


@pytest.mark.slow  # the same world check is one line under torchrun in the default suite (test_bad_inputs)
def test_a_world_too_small_for_the_options_is_one_line_under_mpirun(tmp_path, small_corpus, hostfile):
    result = mpirun(["-np", "1", "--num_device", "1", "--data_dir", str(small_corpus),
                     "--output_dir", str(tmp_path / "out")], hostfile, timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("run.py: error:")]
    assert lines == ["run.py: error: --num_device 1 server processes leave no client process in a world of 1 "
                     "(launch at least 2 processes)"], result.stderr[-2000:]
    assert not (tmp_path / "out").exists()


def test_ranks_agree_on_rank_0s_address_through_mpi4py(tmp_path):
    """Each rank writes what it agreed on to a file of its own: mpirun forwards the ranks' stdout
    interleaved, so two lines printed at once can arrive mixed."""
    pytest.importorskip("mpi4py", reason="mpi4py (the optional `mpi` extra) is not installed")
    script = ("import dataclasses, pathlib, sys; from fedbiobert.comm.groups import agree_master_addr; "
              "from fedbiobert.comm.launch_env import launch_info_from_env; "
              "launch = dataclasses.replace(launch_info_from_env(), master_addr=None); "
              "pathlib.Path(sys.argv[1], f'rank{launch.rank}.txt').write_text("
              "f'{launch.launcher} {launch.rank} {agree_master_addr(launch)}')")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    root = ["--allow-run-as-root"] if os.geteuid() == 0 else []
    result = subprocess.run(["mpirun", *root, "--oversubscribe", "-np", "2", sys.executable, "-c", script,
                             str(tmp_path)], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    agreed = [(tmp_path / f"rank{rank}.txt").read_text() for rank in (0, 1)]
    assert agreed == [f"openmpi {rank} {socket.gethostname()}" for rank in (0, 1)]


def test_the_mpirun_script_runs_without_mpirun_args_under_set_u(tmp_path):
    """No MPIRUN_ARGS: its array of extra options is empty (an "unbound variable" under set -u in bash
    before 4.4 unless expanded safely). One rank of `echo` in place of python shows the command went through."""
    env = {**os.environ, "PYTHON": "echo"}
    env.pop("MPIRUN_ARGS", None)
    result = subprocess.run(["bash", str(REPO / "launch" / "mpirun.sh"), "-np", "1", "--lr", "1"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == [str(REPO / "run.py"), "--lr", "1"]

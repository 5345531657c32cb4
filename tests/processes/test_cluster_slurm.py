"""The batch scripts of slurm/ submitted with a real `sbatch` to a real single-node SLURM (tests/slurm_cluster.py
starts it for the session and stops it after): the tiny run with one task per rank, the same under
srun + torchrun, and a job requeued at its time-limit signal that continues from its checkpoint. Each
reads the job's log and its final state from slurmctld."""
import os
import sys
import time

import pytest

from fedbiobert.comm.launch_env import expand_nodelist
from tests.support.cluster import TINY_CORPUS, TINY_RUN, assert_finished, missing_tools_reason
from tests.conftest import slice_corpus
from tests.support.launch import REPO
from tests.support.slurm_cluster import SlurmCluster

REASON = missing_tools_reason("munged", "slurmctld", "slurmd", "sbatch") or (
    None if os.geteuid() == 0 else "slurmd runs jobs as root here (SlurmdUser=root): the tests need root")
pytestmark = pytest.mark.skipif(REASON is not None, reason=REASON or "")
# The scripts' #SBATCH lines are a cluster's (2 nodes, 4 GPUs each, partition gpu): the sbatch line overrides
# them for this one CPU node, as a user would for another cluster.
ONE_NODE = ["--nodes=1", "--gpus-per-node=0", "--partition=debug", "--account=test", "--time=10"]


@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return slice_corpus(tmp_path_factory.mktemp("slurm-corpus"), TINY_CORPUS)


def sbatch(slurm, script: str, options: list[str], run_args: list[str], tmp_path, wait: bool = True, **env):
    job_env = {"PYTHON": sys.executable, "OUTPUT_DIR": str(tmp_path / "out"), "OMP_NUM_THREADS": "1", **env}
    command = ["sbatch", "--parsable", *(["--wait"] if wait else []), *ONE_NODE, *options,
               f"--output={tmp_path}/job-%j.out", str(REPO / "slurm" / script), *run_args,
               "--cache_dir", str(tmp_path / "cache")]
    result = slurm.run(command, check=False, timeout=300, cwd=REPO, env=job_env)
    job_id = result.stdout.strip().split(";")[0]
    assert job_id.isdigit(), f"sbatch said: {result.stdout} {result.stderr}"
    return job_id, result.returncode


def test_one_task_per_rank_through_sbatch(slurm, corpus, tmp_path):
    job_id, status = sbatch(slurm, "fedbiobert-tasks.sbatch", ["--ntasks-per-node=3", "--cpus-per-task=1"],
                            [*TINY_RUN, "--data_dir", str(corpus)], tmp_path)
    log = (tmp_path / f"job-{job_id}.out").read_text()
    assert status == 0, log[-3000:]
    assert (slurm.job_field(job_id, "JobState"), slurm.job_field(job_id, "ExitCode")) == ("COMPLETED", "0:0")
    host = slurm.run(["scontrol", "show", "hostnames", slurm.job_field(job_id, "NodeList")]).stdout.split()[0]
    assert f"launched by slurm: 3 processes, 3 on this node; rank 0 listens at {host}:" in log
    assert_finished(tmp_path / "out")


@pytest.mark.slow
def test_srun_and_torchrun_with_a_c10d_rendezvous_through_sbatch(slurm, corpus, tmp_path):
    job_id, status = sbatch(slurm, "fedbiobert-torchrun.sbatch", ["--cpus-per-task=3"],
                            [*TINY_RUN, "--data_dir", str(corpus)], tmp_path, PROCS_PER_NODE="3")
    log = (tmp_path / f"job-{job_id}.out").read_text()
    assert status == 0 and slurm.job_field(job_id, "JobState") == "COMPLETED", log[-3000:]
    assert "launched by torchrun: 3 processes, 3 on this node" in log
    assert_finished(tmp_path / "out")


@pytest.mark.slow
def test_a_job_requeued_at_its_time_limit_signal_continues_from_its_checkpoint(slurm, corpus, tmp_path):
    """SLURM sends SIGUSR1 before the limit (--signal=B:USR1@300); scancel --signal sends it now."""
    job_id, _ = sbatch(slurm, "fedbiobert-tasks.sbatch", ["--ntasks-per-node=3", "--cpus-per-task=1"],
                       [*TINY_RUN, "--n_comm_rounds", "30", "--data_dir", str(corpus)], tmp_path, wait=False)
    checkpoint = tmp_path / "out" / "checkpoint" / "state.pt"
    deadline = time.monotonic() + 180
    while not checkpoint.is_file() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert checkpoint.is_file(), (tmp_path / f"job-{job_id}.out").read_text()[-3000:]
    slurm.run(["scancel", "--signal=USR1", "--batch", job_id])
    # requeued: its processes are gone once it is pending again, which it stays for 2 minutes (SLURM's
    # delay before a requeued job is eligible), cut short here
    slurm.wait_for_state(job_id, ("PENDING",), timeout=60)
    slurm.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"])
    state = slurm.wait_for_state(job_id, ("COMPLETED", "FAILED", "CANCELLED"), timeout=240)
    log = (tmp_path / f"job-{job_id}.out").read_text()
    assert state == "COMPLETED", log[-3000:]
    assert "requeueing job" in log and "slurm: continuing from" in log and "(restart 1)" in log, log[-3000:]
    assert "this invocation trained rounds 1-30" not in log  # the second start resumed
    assert_finished(tmp_path / "out", rounds=30)


@pytest.mark.parametrize("nodelist", ["gpu[01-03,07]", "a[8-10],login1", "rack[1-2]-n[1-2]", "gpu[098-101]"])
def test_the_node_list_parser_agrees_with_scontrol(slurm, nodelist):
    assert expand_nodelist(nodelist) == slurm.run(["scontrol", "show", "hostnames", nodelist]).stdout.split()

"""The batch scripts of slurm/ submitted with a real `sbatch` to a real single-node SLURM (tests/slurm_cluster.py
starts it for the session and stops it after): the tiny run with one task per rank, the same under
srun + torchrun, and a job requeued at its time-limit signal that continues from its checkpoint. Each
reads the job's log and its final state from slurmctld. A second SLURM of two nodes on this machine (two
slurmd) shows where the ranks land: the first node holds ranks 0.. (the servers) under both scripts.

Some tests give the scripts a probe for PYTHON: a shell script that writes what srun handed each task
(its SLURM variables, its arguments) to a file and exits, so that the step itself is what is checked."""
import json
import os
import re
import socket
import sys
import time

import pytest

from fedbiobert.comm.launch_env import expand_nodelist, free_port
from fedbiobert.metrics import read_events
from tests.support.cluster import TINY_CORPUS, TINY_RUN, assert_finished, missing_tools_reason, tool
from tests.conftest import slice_corpus
from tests.support.launch import REPO
from tests.support.slurm_cluster import CONF, SlurmCluster

REASON = missing_tools_reason("munged", "slurmctld", "slurmd", "sbatch") or (
    None if os.geteuid() == 0 else "slurmd runs jobs as root here (SlurmdUser=root): the tests need root")
pytestmark = pytest.mark.skipif(REASON is not None, reason=REASON or "")
# The scripts' #SBATCH lines are a cluster's (2 nodes, 4 GPUs each, partition gpu): the sbatch line overrides
# them for this one CPU node, as a user would for another cluster.
ONE_NODE = ["--nodes=1", "--gpus-per-node=0", "--partition=debug", "--account=test", "--time=10"]


def _running(cluster):
    """Start `cluster`, hand it to the tests, stop it whatever happened (a fixture's body)."""
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
    yield from _running(SlurmCluster(tmp_path_factory.mktemp("slurm")))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return slice_corpus(tmp_path_factory.mktemp("slurm-corpus"), TINY_CORPUS)


def sbatch(slurm, script: str, options: list[str], run_args: list[str], tmp_path, wait: bool = True,
           nodes: list[str] = ONE_NODE, **env):
    job_env = {"PYTHON": sys.executable, "OUTPUT_DIR": str(tmp_path / "out"), "OMP_NUM_THREADS": "1", **env}
    command = ["sbatch", "--parsable", *(["--wait"] if wait else []), *nodes, *options,
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


PROBE = """#!/bin/sh
# stands in for PYTHON: what srun handed this task, one KEY=VALUE a line, then its arguments
{ for key in SLURM_PROCID SLURM_NODEID SLURMD_NODENAME SLURM_CPUS_PER_TASK SRUN_CPUS_PER_TASK; do
      eval "echo $key=\\${$key:-unset}"
  done
  for arg in "$@"; do echo "arg=$arg"; done; } > "$PROBE_DIR/task-$SLURM_PROCID.txt"
"""


def probe_tasks(tmp_path, slurm, script: str, options: list[str], nodes: list[str] = ONE_NODE, **env) -> list[dict]:
    """Submit `script` with the probe as PYTHON; what each task of its step was given, in task order."""
    probe, probe_dir = tmp_path / "probe.sh", tmp_path / "tasks"
    probe.write_text(PROBE)
    probe.chmod(0o755)
    probe_dir.mkdir()
    env = {"MASTER_ADDR": "", **env}  # the scripts' own default unless a test sets it (empty counts as unset)
    job_id, status = sbatch(slurm, script, options, ["--lr", "1"], tmp_path, nodes=nodes, PYTHON=str(probe),
                            PROBE_DIR=str(probe_dir), **env)
    assert status == 0, (tmp_path / f"job-{job_id}.out").read_text()[-3000:]
    tasks = []
    for path in sorted(probe_dir.iterdir(), key=lambda path: int(path.stem.split("-")[1])):
        lines = path.read_text().splitlines()
        task = dict(line.split("=", 1) for line in lines if not line.startswith("arg="))
        tasks.append({**task, "args": [line[4:] for line in lines if line.startswith("arg=")]})
    return tasks


def test_each_task_of_the_step_is_given_the_jobs_cpus_per_task(slurm, tmp_path):
    """srun 22.05+ takes --cpus-per-task from SRUN_CPUS_PER_TASK, not from the job: without it each task
    of the step gets one CPU (bound to it where the site binds tasks; this test SLURM binds nothing, so the
    task's environment is what shows it)."""
    tasks = probe_tasks(tmp_path, slurm, "fedbiobert-tasks.sbatch", ["--ntasks-per-node=2", "--cpus-per-task=2"])
    assert [(task["SLURM_PROCID"], task["SRUN_CPUS_PER_TASK"], task["SLURM_CPUS_PER_TASK"]) for task in tasks] == [
        ("0", "2", "2"), ("1", "2", "2")]


class TwoNodeSlurm(SlurmCluster):
    """SLURM with two nodes, node1 and node2, on this one machine: two slurmd, each with its own name, port,
    spool and log (slurm.conf's %n), both at 127.0.0.1. The names do not resolve, so the ranks of a job
    meet at MASTER_ADDR=127.0.0.1, as a user sets it where node names do not resolve."""
    NODES = ("node1", "node2")

    def start(self) -> None:
        (self.root / "state").mkdir()
        self.conf.write_text(self._conf(socket.gethostname().split(".")[0]))
        self._start_munge()
        self.daemons.append(self._spawn([tool("slurmctld"), "-D", "-i", "-f", str(self.conf)], "slurmctld.out"))
        for node in self.NODES:
            self.daemons.append(self._spawn([tool("slurmd"), "-D", "-N", node, "-f", str(self.conf)], f"{node}.out"))
        self._wait_until_idle()

    def _conf(self, host: str) -> str:
        conf = CONF.format(host=host, root=self.root, ctld_port=free_port(), slurmd_port=0)
        node_line = next(line for line in conf.splitlines() if line.startswith("NodeName="))
        nodes = "\n".join(
            node_line.replace(f"NodeName={host} ", f"NodeName={node} NodeHostname={host} Port={free_port()} ")
            for node in self.NODES)
        replacements = [("SlurmdPort=0\n", ""), (node_line, nodes), (f"Nodes={host} ", "Nodes=node[1-2] ")] + [
            (f"{name}={self.root}/{path}", f"{name}={self.root}/{path}-%n")
            for name, path in (("SlurmdSpoolDir", "spool"), ("SlurmdPidFile", "slurmd.pid"),
                               ("SlurmdLogFile", "slurmd.log"))]
        for old, new in replacements:
            assert old in conf, f"tests/support/slurm_cluster.py's CONF changed: no '{old.strip()}' in it"
            conf = conf.replace(old, new)
        return conf


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory):
    yield from _running(TwoNodeSlurm(tmp_path_factory.mktemp("slurm2")))


TWO_NODES = ["--nodes=2", "--gpus-per-node=0", "--partition=debug", "--account=test", "--time=10"]


def test_one_task_per_rank_puts_ranks_0_on_the_first_node(two_nodes, tmp_path):
    """Block distribution whatever SLURM_DISTRIBUTION the user's environment has (here: cyclic)."""
    tasks = probe_tasks(tmp_path, two_nodes, "fedbiobert-tasks.sbatch", ["--ntasks-per-node=2", "--cpus-per-task=1"],
                        nodes=TWO_NODES, SLURM_DISTRIBUTION="cyclic")
    assert [(task["SLURM_PROCID"], task["SLURMD_NODENAME"]) for task in tasks] == [
        ("0", "node1"), ("1", "node1"), ("2", "node2"), ("3", "node2")]


def test_torchrun_agents_take_their_node_rank_from_their_node(two_nodes, tmp_path):
    """The agent on the job's node i gets --node_rank i (a static rendezvous), so its ranks are i*P..i*P+P-1."""
    tasks = probe_tasks(tmp_path, two_nodes, "fedbiobert-torchrun.sbatch", ["--cpus-per-task=1"], nodes=TWO_NODES,
                        PROCS_PER_NODE="2")
    for node, task in enumerate(tasks):
        assert (task["SLURM_NODEID"], task["SLURMD_NODENAME"]) == (str(node), f"node{node + 1}")
        args = task["args"]
        assert args[:4] == ["-m", "torch.distributed.run", "--node_rank", str(node)], args
        options = dict(zip(args[4:12:2], args[5:12:2]))
        assert options == {"--nnodes": "2", "--nproc_per_node": "2", "--master_addr": "node1",
                           "--master_port": options["--master_port"]}
        assert args[12:] == [str(REPO / "run.py"), "--output_dir", str(tmp_path / "out"), "--lr", "1",
                             "--cache_dir", str(tmp_path / "cache")]


@pytest.mark.slow
def test_torchrun_on_two_nodes_puts_the_server_on_the_first(two_nodes, corpus, tmp_path):
    """The tiny run on 2 nodes x 2 processes (1 server, 3 client processes): every line of the job's log
    carries srun's label, the node (task) it came from; each rank logs (FEDBIOBERT_LOG_LEVEL=INFO) with its
    rank, so the log says where each rank ran."""
    job_id, status = sbatch(two_nodes, "fedbiobert-torchrun.sbatch", ["--cpus-per-task=1"],
                            [*TINY_RUN, "--n_clients", "3", "--data_dir", str(corpus)], tmp_path, nodes=TWO_NODES,
                            PROCS_PER_NODE="2", MASTER_ADDR="127.0.0.1", FEDBIOBERT_LOG_LEVEL="INFO")
    log = (tmp_path / f"job-{job_id}.out").read_text()
    assert status == 0 and two_nodes.job_field(job_id, "JobState") == "COMPLETED", log[-3000:]
    placed = {(int(rank), int(node)) for node, rank in re.findall(r"^\s*(\d+): .*?\[rank (\d+)", log, re.MULTILINE)}
    assert placed == {(0, 0), (1, 0), (2, 1), (3, 1)}, log[-3000:]
    assert set(re.findall(r"^\s*(\d+): .*?\[rank \d+ server\]", log, re.MULTILINE)) == {"0"}
    assert re.search(r"^\s*0: .*\[rank 0.*launched by torchrun: 4 processes, 2 on this node", log, re.MULTILINE)
    events = read_events(tmp_path / "out")
    assert [event["round"] for event in events if event["event"] == "round"] == [1, 2]
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["rounds_completed"] == 2

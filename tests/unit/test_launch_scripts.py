"""The shell of launch/ and slurm/, run by the installed bash (each test starts one bash): arrays that may
be empty expand safely under `set -u`, slurm/common.sh's processes per node from SLURM's GPU variables,
its CPUs per task passed on to srun, and a failing `scontrol requeue` at the time-limit signal that does
not end the batch shell. The scripts under a real sbatch: tests/processes/test_cluster_slurm.py."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = sorted([*REPO.glob("launch/*.sh"), *REPO.glob("slurm/*.sh"), *REPO.glob("slurm/*.sbatch")])
# bash before 4.4 (still the system bash of CentOS/RHEL 7 login nodes) calls an empty array "unbound" under
# set -u in "${a[@]}"; ${a[@]+"${a[@]}"} expands to nothing there and to the quoted elements otherwise
ARRAY_EXPANSION = re.compile(r'\$\{(\w+)\[[@*]\]\}')


def bash(script: str, timeout: float = 30, **env) -> subprocess.CompletedProcess:
    """`script` under bash with this environment less SLURM's variables (a test may itself run in a job)."""
    base = {key: value for key, value in os.environ.items() if not key.startswith(("SLURM_", "SRUN_"))}
    return subprocess.run(["bash", "-c", script], cwd=REPO, env={**base, "FEDBIOBERT_ROOT": str(REPO), **env},
                          capture_output=True, text=True, timeout=timeout)


def test_every_array_expansion_in_the_scripts_is_safe_when_empty():
    unsafe = []
    for path in SCRIPTS:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            for match in ARRAY_EXPANSION.finditer(line):
                guard = "${%s[@]+\"" % match.group(1)
                if not line[:match.start()].endswith(guard):
                    unsafe.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert SCRIPTS and not unsafe, "expand as ${a[@]+\"${a[@]}\"}:\n" + "\n".join(unsafe)


def test_deepspeed_script_runs_with_no_launcher_options_under_set_u():
    """Its three arrays empty but the command: DEEPSPEED names the launcher (echo prints its command line)."""
    result = subprocess.run(["bash", str(REPO / "launch" / "deepspeed.sh"), "--lr", "1"], cwd=REPO,
                            env={**os.environ, "DEEPSPEED": "echo", "DS_ARGS": ""}, capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [str(REPO / "run.py"), "--lr", "1"]
    with_options = subprocess.run(["bash", str(REPO / "launch" / "deepspeed.sh"), "--num_gpus", "2", "--lr", "1"],
                                  cwd=REPO, env={**os.environ, "DEEPSPEED": "echo", "DS_ARGS": "--no_ssh"},
                                  capture_output=True, text=True, timeout=30)
    assert with_options.stdout.split() == ["--num_gpus", "2", "--no_ssh", str(REPO / "run.py"), "--lr", "1"]


@pytest.mark.parametrize("env,procs", [
    ({"SLURM_GPUS_PER_NODE": "4"}, "4"),
    ({"SLURM_GPUS_PER_NODE": "a100:4"}, "4"),                  # --gpus-per-node=a100:4
    ({"SLURM_GPUS_PER_NODE": "gpu:a100:8"}, "8"),
    ({"SLURM_GPUS_PER_NODE": "a100:2,v100:2"}, "4"),
    ({"SLURM_GPUS_ON_NODE": "2", "SLURM_GPUS_PER_NODE": "a100:4"}, "2"),  # the count on this node first
    ({"PROCS_PER_NODE": "3", "SLURM_GPUS_PER_NODE": "a100:4"}, "3"),
    ({}, "4"),
])
def test_processes_per_node_from_slurms_gpu_variables(env, procs):
    result = bash('source slurm/common.sh && procs_per_node', **env)
    assert (result.returncode, result.stdout.strip(), result.stderr) == (0, procs, "")


@pytest.mark.parametrize("env,line", [
    ({"SLURM_GPUS_PER_NODE": "a100:four"}, "slurm: error: SLURM_GPUS_PER_NODE 'a100:four' is not a GPU count"),
    ({"PROCS_PER_NODE": "0"}, "slurm: error: PROCS_PER_NODE '0' is not a number of processes per node"),
    ({"SLURM_GPUS_ON_NODE": "0"}, "slurm: error: this job has no GPU on the node"),
])
def test_bad_processes_per_node_stop_the_script_with_one_line(env, line):
    result = bash('source slurm/common.sh && PROCS="$(procs_per_node)" && echo "started $PROCS"', **env)
    assert result.returncode == 2 and result.stdout == ""
    assert len(result.stderr.splitlines()) == 1 and result.stderr.startswith(line), result.stderr


def test_the_jobs_cpus_per_task_are_passed_on_to_srun():
    """srun (22.05 and later) reads SRUN_CPUS_PER_TASK, not the job's SLURM_CPUS_PER_TASK."""
    probe = 'source slurm/common.sh && echo "${SRUN_CPUS_PER_TASK:-unset}"'
    assert bash(probe, SLURM_CPUS_PER_TASK="8").stdout.strip() == "8"
    assert bash(probe, SLURM_CPUS_PER_TASK="8", SRUN_CPUS_PER_TASK="2").stdout.strip() == "2"  # the user's own
    assert bash(probe).stdout.strip() == "unset"


@pytest.mark.skipif(shutil.which("scontrol") is None, reason="scontrol not installed (scripts/setup_cluster_tools.sh)")
def test_a_failing_requeue_at_the_time_limit_signal_does_not_end_the_batch_shell(tmp_path):
    """The real scontrol, given a configuration it cannot use, fails; the step (which signals the batch
    shell as SLURM would, mid-wait) still finishes and the shell goes on after it."""
    (tmp_path / "slurm.conf").write_text("")
    script = ('source slurm/common.sh\n'
              'run_step bash -c "sleep 0.5; kill -USR1 $$; sleep 1; echo step done"\n'
              'echo "batch shell went on: status $?"\n')
    result = bash(script, SLURM_JOB_ID="4242", SLURM_CONF=str(tmp_path / "slurm.conf"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["step done", "batch shell went on: status 0"]
    assert "slurm: time limit near: requeueing job 4242" in result.stderr
    assert "slurm: requeue of job 4242 failed (scontrol's error is above)" in result.stderr

"""Thread counts follow the CPUs a process may run on (its affinity), not the machine's count: a process
started under `taskset -c CPU` (as srun, mpirun or a site's cgroup cpuset bind ranks) on a machine of
several CPUs chooses one torch thread (run.py's set_cpu_threads) and gives the processes fedbiobert-run
starts OMP_NUM_THREADS=1."""
import json
import os
import shutil
import subprocess
import sys

import pytest

from tests.support.launch import REPO

ALLOWED = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
pytestmark = pytest.mark.skipif(shutil.which("taskset") is None or len(ALLOWED) < 2,
                                reason="needs taskset and at least 2 CPUs to bind a process to 1 of them")

CHILD = """
import json, os, torch
from fedbiobert.comm.launch_env import LaunchInfo, usable_cpus
from fedbiobert.config import parse_config
from fedbiobert.launcher import set_omp_threads
from fedbiobert.session import set_cpu_threads
torch.set_num_threads(os.cpu_count())
set_cpu_threads(parse_config([]), LaunchInfo(0, 1, 0, 1))
set_omp_threads(1)
print(json.dumps({"usable": usable_cpus(), "torch": torch.get_num_threads(), "omp": os.environ["OMP_NUM_THREADS"],
                  "machine": os.cpu_count()}))
"""


def test_a_process_bound_to_one_cpu_uses_one_thread():
    env = {key: value for key, value in os.environ.items() if key not in ("OMP_NUM_THREADS", "SLURM_CPUS_PER_TASK")}
    result = subprocess.run(["taskset", "-c", str(ALLOWED[0]), sys.executable, "-c", CHILD], cwd=REPO,
                            env={**env, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    chosen = json.loads(result.stdout.strip().splitlines()[-1])
    assert chosen["machine"] >= 2
    assert (chosen["usable"], chosen["torch"], chosen["omp"]) == (1, 1, "1")

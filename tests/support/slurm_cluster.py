"""A real single-node SLURM for the tests: munged, slurmctld and slurmd from the distribution's packages
(scripts/setup_cluster_tools.sh installs them), started on a generated slurm.conf for this machine, with
every file (key, state, spool, logs, sockets) in a temporary folder and free ports, so that it touches
nothing of the system's and two test sessions on one machine do not meet.

Settings a container needs: no cgroups (proctrack/linuxproc, task/none, jobacct_gather/none), no
accounting database, root as SlurmUser and SlurmdUser, and more CPUs declared than a small machine has
(config_overrides) so that 3 ranks fit on a 2-core node."""
from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

from tests.support.cluster import tool
from fedbiobert.comm.launch_env import free_port

START_TIMEOUT_S = 60

CONF = """ClusterName=fedbiobert-test
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={root}/munge.socket
CredType=cred/munge
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
SlurmdParameters=config_overrides
MinJobAge=3600
NodeName={host} NodeAddr=127.0.0.1 CPUs=8 RealMemory=4000 State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


class SlurmCluster:
    def __init__(self, root: Path):
        self.root = root
        self.conf = root / "slurm.conf"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        self.daemons: list[subprocess.Popen] = []

    def start(self) -> None:
        (self.root / "state").mkdir()
        (self.root / "spool").mkdir()
        self.conf.write_text(CONF.format(host=socket.gethostname().split(".")[0], root=self.root,
                                         ctld_port=free_port(), slurmd_port=free_port()))
        self._start_munge()
        self.daemons.append(self._spawn([tool("slurmctld"), "-D", "-i", "-f", str(self.conf)], "slurmctld.out"))
        self.daemons.append(self._spawn([tool("slurmd"), "-D", "-f", str(self.conf)], "slurmd.out"))
        self._wait_until_idle()

    def _start_munge(self) -> None:
        key = self.root / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        subprocess.run([tool("munged"), "--force", f"--socket={self.root}/munge.socket", f"--key-file={key}",
                        f"--log-file={self.root}/munged.log", f"--pid-file={self.root}/munged.pid",
                        f"--seed-file={self.root}/munged.seed"], check=True, timeout=30, capture_output=True)

    def _spawn(self, command: list, log: str) -> subprocess.Popen:
        with open(self.root / log, "wb") as stream:
            return subprocess.Popen(command, env=self.env, stdout=stream, stderr=subprocess.STDOUT)

    def _wait_until_idle(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            state = self.run(["sinfo", "-h", "-o", "%T"], check=False).stdout.strip()
            if state == "idle":
                return
            if any(daemon.poll() is not None for daemon in self.daemons):
                break
            time.sleep(0.5)
        raise RuntimeError(f"SLURM did not come up within {START_TIMEOUT_S}s: {self.logs()}")

    def logs(self) -> str:
        return " | ".join(f"{path.name}: {path.read_text(errors='replace')[-800:]}"
                          for path in sorted(self.root.glob("*.out")) + sorted(self.root.glob("*.log")))

    def run(self, command: list[str], check: bool = True, timeout: float = 60, **kwargs) -> subprocess.CompletedProcess:
        env = {**self.env, **kwargs.pop("env", {})}
        return subprocess.run(command, env=env, capture_output=True, text=True, check=check, timeout=timeout,
                              **kwargs)

    def job_field(self, job_id: str, field: str) -> str:
        """One field of `scontrol show job` (kept for an hour: MinJobAge), e.g. JobState or ExitCode."""
        words = self.run(["scontrol", "show", "job", job_id]).stdout.split()
        return next(word.split("=", 1)[1] for word in words if word.startswith(f"{field}="))

    def wait_for_state(self, job_id: str, states: tuple[str, ...], timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.job_field(job_id, "JobState")
            if state in states:
                return state
            time.sleep(1)
        raise AssertionError(f"job {job_id} still {self.job_field(job_id, 'JobState')} after {timeout:.0f}s")

    def stop(self) -> None:
        for daemon in reversed(self.daemons):
            daemon.terminate()
            try:
                daemon.wait(timeout=20)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait(timeout=10)
        pid_file = self.root / "munged.pid"
        if pid_file.is_file():
            try:
                os.kill(int(pid_file.read_text().strip()), 15)
            except (ProcessLookupError, ValueError):
                pass

"""Who this process is: rank, world and rendezvous address from the launcher's environment.

torchrun and the DeepSpeed launcher, Open MPI, MPICH / Intel MPI, or SLURM srun (one task per rank);
a lone process otherwise. Reads only the environment: nothing here touches torch.distributed.
"""
from __future__ import annotations

import dataclasses
import os
import socket
import zlib
from dataclasses import dataclass

# Launchers, in the order their variables are read. torchrun and the DeepSpeed launcher set RANK and
# WORLD_SIZE (and MASTER_ADDR/PORT) themselves; an MPI launcher started inside a SLURM allocation
# also leaves SLURM_PROCID in the environment (that of the batch step), so MPI variables come before
# SLURM's. Each: (name, rank, world size, local rank, local world size).
LAUNCHER_VARIABLES = (
    ("torchrun", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"),
    ("openmpi", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK",
     "OMPI_COMM_WORLD_LOCAL_SIZE"),
    ("mpich", "PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID", "MPI_LOCALNRANKS"),  # MPICH's and Intel MPI's Hydra
    ("slurm", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID", None),
)
# Variables that name one job, whatever the launcher: a port derived from them is the same on every
# rank of the job and differs between jobs sharing a node.
JOB_ID_VARIABLES = ("SLURM_JOB_ID", "PMIX_NAMESPACE", "OMPI_MCA_ess_base_jobid", "PMI_KVSNAME")
PORT_RANGE = (20000, 60000)
DEFAULT_PORT = 29500


class LaunchError(ValueError):
    """The launch environment is inconsistent or incomplete; the message is one line."""


@dataclass(frozen=True)
class LaunchInfo:
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    launcher: str = "single process"
    # where rank 0 listens (torch's MASTER_ADDR/MASTER_PORT); None when only the ranks themselves can
    # agree on it (MPI across nodes: see `agree_master_addr`)
    master_addr: str | None = "127.0.0.1"
    master_port: int = DEFAULT_PORT

    @property
    def single_node(self) -> bool:
        return self.local_world_size == self.world_size


def launch_info_from_env(env: dict[str, str] | None = None) -> LaunchInfo:
    """Rank, world and rendezvous address from torchrun or the DeepSpeed launcher, Open MPI, MPICH /
    Intel MPI, or SLURM srun (one task per rank); a lone process otherwise. Reads only `env`."""
    env = os.environ if env is None else env
    for name, rank_key, world_key, local_key, local_world_key in LAUNCHER_VARIABLES:
        if rank_key in env and world_key in env:
            if name == "slurm":
                return _slurm_launch(env)
            rank, world_size = _int_variable(env, rank_key), _int_variable(env, world_key)
            local_world = _int_variable(env, local_world_key) if local_world_key in env else None
            if name == "torchrun" and local_world is None and "LOCAL_SIZE" in env:
                name, local_world = "deepspeed", _int_variable(env, "LOCAL_SIZE")  # DeepSpeed's launcher
            info = LaunchInfo(rank, world_size, _int_variable(env, local_key) if local_key in env else 0,
                              local_world if local_world is not None else world_size, name)
            return _with_master(info, env)
    return LaunchInfo(0, 1, 0, 1, master_port=int(env.get("MASTER_PORT", DEFAULT_PORT)))


def _slurm_launch(env) -> LaunchInfo:
    """srun with one task per rank. In a step SLURM_STEP_NUM_TASKS is the step's size (SLURM_NTASKS
    the job's); the local world is this node's entry of SLURM_STEP_TASKS_PER_NODE, e.g. '4(x2),3'."""
    world_key = "SLURM_STEP_NUM_TASKS" if "SLURM_STEP_NUM_TASKS" in env else "SLURM_NTASKS"
    world_size = _int_variable(env, world_key)
    per_node = env.get("SLURM_STEP_TASKS_PER_NODE") or env.get("SLURM_TASKS_PER_NODE")
    node = _int_variable(env, "SLURM_NODEID") if "SLURM_NODEID" in env else 0
    local_world = _tasks_on_node(per_node, node) if per_node else world_size
    nodes = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST")
    info = LaunchInfo(_int_variable(env, "SLURM_PROCID"), world_size, int(env.get("SLURM_LOCALID", 0)),
                      local_world, "slurm", expand_nodelist(nodes)[0] if nodes else "127.0.0.1")
    return _with_master(info, env)


def _with_master(info: LaunchInfo, env) -> LaunchInfo:
    """MASTER_ADDR/MASTER_PORT when the launcher (or the user) set them; else the first node of a
    SLURM job, localhost for a one-node MPI job, or None (MPI across nodes); a port from the job id."""
    addr = env.get("MASTER_ADDR") or (info.master_addr if info.launcher == "slurm" else None)
    if addr is None and info.single_node:
        addr = "127.0.0.1"
    port = _int_variable(env, "MASTER_PORT") if env.get("MASTER_PORT") else job_port(env)
    return dataclasses.replace(info, master_addr=addr, master_port=port)


def _int_variable(env, key: str) -> int:
    value = env[key]
    if not value.strip().isdigit():
        raise LaunchError(f"launch environment: {key}='{value}' is not a non-negative integer")
    return int(value)


def _tasks_on_node(per_node: str, node: int) -> int:
    """SLURM's compressed count list ('4(x2),3': 4 tasks on nodes 0 and 1, 3 on node 2) at `node`."""
    counts = []
    for item in per_node.split(","):
        count, _, repeat = item.partition("(x")
        counts += [int(count)] * (int(repeat.rstrip(")")) if repeat else 1)
    if node >= len(counts):
        raise LaunchError(f"launch environment: SLURM_NODEID={node} but the tasks per node '{per_node}' "
                          f"cover {len(counts)} node(s)")
    return counts[node]


def job_port(env) -> int:
    """A port in [20000, 60000) derived from the job's id (the same on every rank), or 29500."""
    for key in JOB_ID_VARIABLES:
        if env.get(key):
            return PORT_RANGE[0] + zlib.crc32(env[key].encode()) % (PORT_RANGE[1] - PORT_RANGE[0])
    return DEFAULT_PORT


def expand_nodelist(nodelist: str) -> list[str]:
    """SLURM's compressed host list ('gpu[01-03,07],login1') -> host names in order, as
    `scontrol show hostnames` prints them (zero padding kept)."""
    hosts, depth, start = [], 0, 0
    for index, char in enumerate(nodelist + ","):
        depth += {"[": 1, "]": -1}.get(char, 0)
        if char == "," and depth == 0:
            hosts += _expand_host(nodelist[start:index].strip(), nodelist)
            start = index + 1
    if depth != 0:
        raise LaunchError(f"launch environment: SLURM node list '{nodelist}' has an unclosed '['")
    return [host for host in hosts if host]


def _expand_host(item: str, nodelist: str) -> list[str]:
    """One entry: 'gpu[01-03,07]' or 'rack[1-2]-n[1-2]' (every bracket expanded, left to right)."""
    if "[" not in item:
        return [item]
    prefix, _, rest = item.partition("[")
    ranges, closed, suffix = rest.partition("]")
    if not closed:
        raise LaunchError(f"launch environment: SLURM node list '{nodelist}' has an unclosed '['")
    names = []
    for part in ranges.split(","):
        first, _, last = part.partition("-")
        if not first.isdigit() or (last and not last.isdigit()):
            raise LaunchError(f"launch environment: SLURM node list '{nodelist}' has a bad range '{part}'")
        for number in range(int(first), int(last or first) + 1):
            names += [f"{prefix}{number:0{len(first)}d}{tail}" for tail in _expand_host(suffix, nodelist)]
    return names


def usable_cpus() -> int:
    """The CPUs this process may run on: its affinity mask (taskset, srun or mpirun binding, a cgroup
    cpuset), not the machine's count, which over-counts for a process bound to a few of its cores."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # no affinity call on this platform (macOS): the machine's count
        return os.cpu_count() or 1


def threads_per_process(local_processes: int, cpus_per_task: int | None = None) -> int:
    """Threads for one of `local_processes` processes that share this process's CPUs (at least 1); with
    `cpus_per_task` (CPUs of its own, see `slurm_cpus_per_task`) that many, if it may run on as many."""
    if cpus_per_task:
        return max(1, min(usable_cpus(), cpus_per_task))
    return max(1, usable_cpus() // max(1, local_processes))


def slurm_cpus_per_task(launch: LaunchInfo, env=None) -> int | None:
    """srun's --cpus-per-task when each rank is an srun task (the 'slurm' launcher): the rank's share of
    the node, whether the site binds each task to its CPUs (its affinity is then that many) or not (its
    affinity is then the step's CPUs on the node, --cpus-per-task for each of the node's tasks)."""
    env = os.environ if env is None else env
    value = env.get("SLURM_CPUS_PER_TASK", "")
    return int(value) if launch.launcher == "slurm" and value.isdigit() and int(value) > 0 else None


def gpus_bound_per_task(world_size: int, local_world_size: int, env=None) -> bool:
    """Whether srun gave each rank GPUs of its own: the ranks are srun's tasks (the 'slurm' launcher, with
    this world) in a step with --gpus-per-task or a --gpu-bind other than none. Each task's
    CUDA_VISIBLE_DEVICES then lists only its own GPU(s), so a rank that sees one GPU on a node of several
    ranks is bound, not short of GPUs. A process that starts the ranks itself (torchrun's agent,
    fedbiobert-run) is not such a task: its children share what it sees."""
    env = os.environ if env is None else env
    try:
        launch = launch_info_from_env(env)
    except LaunchError:
        return False
    if (launch.launcher, launch.world_size, launch.local_world_size) != ("slurm", world_size, local_world_size):
        return False
    # --gpu-bind=[verbose,]TYPE: none turns binding off, even the one --gpus-per-task implies
    bind = [part for part in env.get("SLURM_GPU_BIND", "").split(",") if part and part not in ("verbose", "quiet")]
    if any(part.startswith("none") for part in bind):
        return False
    return bool(env.get("SLURM_GPUS_PER_TASK") or bind)


def free_port() -> int:
    """A TCP port free on this machine now (for a local rendezvous: tests, the bench)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]

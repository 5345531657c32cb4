"""The process groups of a run, created in the same order on every rank (a torch requirement).

NCCL cannot receive "from any source", so headers always travel over a gloo group per server (which
can), and payloads over the data backend (NCCL on GPUs, gloo on CPUs) from the named source, on one
2-rank group per direction of each (server, client process) pair: see channel.py for why.
"""
from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass, field

import torch.distributed as dist

from fedbiobert.comm.launch_env import LaunchError, LaunchInfo
from fedbiobert.topology import Topology

logger = logging.getLogger(__name__)


def agree_master_addr(launch: LaunchInfo) -> str:
    """MPI across nodes without MASTER_ADDR: rank 0's host name, broadcast over MPI (mpi4py)."""
    try:
        from mpi4py import MPI
    except ImportError:
        raise LaunchError(f"{launch.launcher} started {launch.world_size} processes on several nodes but "
                          "MASTER_ADDR is not set: pass it (mpirun -x MASTER_ADDR=<first host>) or install "
                          "mpi4py (pip install -e '.[mpi]') so the ranks agree on it") from None
    import socket
    return MPI.COMM_WORLD.bcast(socket.gethostname() if launch.rank == 0 else None, root=0)


def backend_for(on_cuda: bool, backend: str = "auto") -> str:
    """The data backend: NCCL on GPUs, gloo on CPUs, unless --backend names one."""
    return ("nccl" if on_cuda else "gloo") if backend == "auto" else backend


@dataclass
class ProcessGroups:
    """Every group a run uses; created in the same order on every rank (a torch requirement)."""
    data_backend: str
    cpu: object                      # gloo over all ranks: headers, objects, control
    headers: dict[int, object]       # server rank -> gloo group {server} + its client processes: headers
    clients: object                  # all client processes: FedAvg of client parts
    servers: object                  # all server processes: FedAvg of server replicas
    round_end: object = None         # gloo over all ranks, timeout --round_timeout: the round-end meeting
    # (server, client process) -> a group {server, client} of the data backend per direction, for the
    # payload only: up carries client -> server, down server -> client (see the module docstring).
    up: dict[tuple[int, int], object] = field(default_factory=dict)
    down: dict[tuple[int, int], object] = field(default_factory=dict)


def init_distributed(launch: LaunchInfo, topology: Topology, on_cuda: bool, timeout_s: float,
                     round_timeout_s: float | None = None, backend: str = "auto") -> ProcessGroups:
    """Every group, created in the same order on every rank. Each group's timeout bounds every wait
    on it: --comm_timeout for exchanges and FedAvg, and --round_timeout for the one group whose
    barrier waits for a whole round (Collectives.round_barrier)."""
    timeout = datetime.timedelta(seconds=timeout_s)
    backend = backend_for(on_cuda, backend)
    # torch's env:// rendezvous reads these; the launcher's own values (torchrun, DeepSpeed) are kept
    os.environ.setdefault("MASTER_ADDR", launch.master_addr or agree_master_addr(launch))
    os.environ.setdefault("MASTER_PORT", str(launch.master_port))
    if launch.rank == 0:
        logger.info("launched by %s: %d processes, %d on this node; rank 0 listens at %s:%s; backend %s",
                    launch.launcher, launch.world_size, launch.local_world_size, os.environ["MASTER_ADDR"],
                    os.environ["MASTER_PORT"], backend)
    dist.init_process_group(backend, rank=launch.rank, world_size=launch.world_size, timeout=timeout)
    cpu = dist.group.WORLD if backend == "gloo" else dist.new_group(backend="gloo", timeout=timeout)
    headers = {server: dist.new_group([server] + topology.client_ranks_of(server), backend="gloo", timeout=timeout)
               for server in topology.server_ranks}
    clients = dist.new_group(topology.client_ranks, backend=backend, timeout=timeout)
    # new_group([]) would mean "every rank": a world without servers has no server group.
    servers = dist.new_group(topology.server_ranks, backend=backend, timeout=timeout) if topology.num_servers else None
    round_end = dist.new_group(backend="gloo", timeout=datetime.timedelta(seconds=round_timeout_s or timeout_s))
    up, down = _direction_groups(topology, backend, timeout)
    return ProcessGroups(backend, cpu, headers, clients, servers, round_end, up, down)


def _direction_groups(topology: Topology, backend: str, timeout: datetime.timedelta) -> tuple[dict, dict]:
    """Two 2-rank groups of the data backend per (server, client process): up, then down, for each
    server in rank order and each of its client processes in rank order (every rank, same order)."""
    up, down = {}, {}
    for server in topology.server_ranks:
        for client in topology.client_ranks_of(server):
            up[(server, client)] = dist.new_group([server, client], backend=backend, timeout=timeout)
            down[(server, client)] = dist.new_group([server, client], backend=backend, timeout=timeout)
    return up, down


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()

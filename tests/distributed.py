"""Run a function on N real processes joined in a gloo process group (for multi-process tests)."""
from __future__ import annotations

import os
import socket
import time

import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _entry(rank: int, world_size: int, port: int, worker, args) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world_size))
    import torch
    torch.set_num_threads(1)
    worker(rank, world_size, *args)


def run_processes(worker, world_size: int, *args, timeout: float = 120.0) -> None:
    """Spawn `world_size` processes running worker(rank, world_size, *args); fail on error or timeout."""
    context = mp.start_processes(_entry, args=(world_size, free_port(), worker, args), nprocs=world_size,
                                 join=False, start_method="spawn")
    deadline = time.time() + timeout
    while not context.join(timeout=1):
        if time.time() > deadline:
            for process in context.processes:
                process.kill()
            raise TimeoutError(f"{world_size} processes did not finish within {timeout}s")


def world_link_channel(timeout_s: float = 30):
    """In a process of `run_processes`: (channel, groups, topology) of a world with one server
    (rank 0) and every other rank a client process, built as a run builds it (link_channel: a data
    group per direction of each link)."""
    import types

    import torch

    from fedbiobert.comm import init_distributed, launch_info_from_env, link_channel
    from fedbiobert.config import Config
    from fedbiobert.topology import Topology
    launch = launch_info_from_env()
    topology = Topology(launch.world_size, 1, launch.world_size - 1, launch.world_size - 1, 0)
    groups = init_distributed(launch, topology, on_cuda=False, timeout_s=60)
    session = types.SimpleNamespace(groups=groups, config=Config(comm_timeout=timeout_s), rank=launch.rank,
                                    device=torch.device("cpu"), topology=topology)
    return link_channel(session, 0), groups, topology

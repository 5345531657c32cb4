"""Run a function on N real processes joined in a gloo process group (for multi-process tests)."""
from __future__ import annotations

import os
import time

import torch.multiprocessing as mp

from fedbiobert.comm.launch_env import free_port


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


def world_channel(timeout_s: float = 30, wan=None):
    """In a process of `run_processes`: (channel, groups, topology) of a world with one server
    (rank 0) and every other rank a client process, built as a run builds it (server_channel: a data
    group per direction of each pair)."""
    import torch

    from fedbiobert.comm.channel import server_channel
    from fedbiobert.comm.groups import init_distributed
    from fedbiobert.comm.launch_env import launch_info_from_env
    from fedbiobert.topology import Topology
    launch = launch_info_from_env()
    topology = Topology(launch.world_size, 1, launch.world_size - 1, launch.world_size - 1, 0)
    groups = init_distributed(launch, topology, on_cuda=False, timeout_s=60)
    channel = server_channel(groups, launch.rank, 0, topology.client_ranks_of(0), torch.device("cpu"), timeout_s,
                             topology.describe, wan)
    return channel, groups, topology

"""FedBioBERT entry point: config -> checks -> distributed init -> session -> role.run().

    torchrun --standalone --nproc_per_node 3 run.py --num_client_encoder 2 --num_server_encoder 2 ...

Every process runs this file. Ranks 0..num_device-1 become servers, the rest client processes.
Bad options fail here, on every rank, before any process group is formed or anything is written.
"""
from __future__ import annotations

import logging
import os
import sys
import time

import torch

from fedbiobert.algorithms import build_algorithm
from fedbiobert.comm import PeerError, init_distributed, launch_info_from_env, shutdown
from fedbiobert.config import ConfigError, parse_config, validate_paths, validate_static, validate_world
from fedbiobert.checkpoint import load_resume_for, prepare_output_dir
from fedbiobert.logs import setup_logging
from fedbiobert.roles import build_role
from fedbiobert.roles.base import NonFiniteError, RoundAborted
from fedbiobert.session import build_session
from fedbiobert.topology import Topology

logger = logging.getLogger("fedbiobert.run")


def check_config(argv):
    config = parse_config(argv)
    launch = launch_info_from_env()
    validate_static(config)
    validate_paths(config)
    validate_world(config, launch.world_size, launch.local_world_size, torch.cuda.is_available())
    try:
        resume = load_resume_for(config)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    return config, launch, resume


def exit_code(error: Exception) -> int:
    """2: bad input; 3: the run stopped on purpose (too few clients, NaN/inf); 1: anything else."""
    if isinstance(error, ValueError):
        return 2
    return 3 if isinstance(error, (NonFiniteError, RoundAborted)) else 1


def main(argv: list[str] | None = None) -> int:
    started = time.time()
    rank = launch_info_from_env().rank
    setup_logging(rank)
    try:
        config, launch, resume = check_config(argv)
    except ConfigError as error:
        if launch_info_from_env().local_rank == 0:  # every rank fails alike: say it once per node
            print(f"run.py: error: {error}", file=sys.stderr)
        return 2
    topology = Topology(launch.world_size, config.num_servers, config.n_clients, config.clients_per_round,
                        config.manual_seed)
    setup_logging(rank, topology.role(rank).value)
    groups = init_distributed(launch, topology, config.on_cuda, config.comm_timeout)
    role = None
    try:
        session = build_session(config, launch, topology, groups, started)
        session.resume = resume
        if rank == 0:
            prepare_output_dir(config)
        role = build_role(session, build_algorithm(session))
        role.run()
        role.finish(time.time() - started)
    except Exception as error:  # report who failed, then leave without waiting for peers
        expected = isinstance(error, (ValueError, PeerError, NonFiniteError, RoundAborted))  # no traceback
        where = f" in round {role.current_round + 1}" if role is not None else " while starting"
        logger.error("%s failed%s: %s: %s", topology.describe(rank), where, type(error).__name__, error,
                     exc_info=not expected)
        logging.shutdown()
        os._exit(exit_code(error))
    shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())

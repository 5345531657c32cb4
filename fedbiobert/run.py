"""What every process of a run does: config -> checks -> distributed init -> session -> role.run().

    fedbiobert-run --nproc_per_node 3 --num_client_encoder 2 --num_server_encoder 2 ...
    torchrun --standalone --nproc_per_node 3 run.py --num_client_encoder 2 --num_server_encoder 2 ...
    torchrun --standalone --nproc_per_node 3 -m fedbiobert.run ...   (an installed package, no source folder)

    mpirun -np 3 python run.py ...            srun --ntasks 3 python run.py ...
    deepspeed --hostfile hostfile run.py ...

Every process runs this module (the repository's run.py is its thin entry; fedbiobert-run checks
the options once, then starts torchrun's agent on it; launch/ and slurm/ hold scripts for the other
launchers). Ranks 0..num_device-1 become
servers, the rest client processes.
Bad options fail here, on every rank, before any process group is formed or anything is written.
"""
from __future__ import annotations

import logging
import os
import sys
import time

from fedbiobert.algorithms import build_algorithm
from fedbiobert.comm.errors import PeerError
from fedbiobert.comm.groups import init_distributed, shutdown
from fedbiobert.comm.launch_env import LaunchError, launch_info_from_env
from fedbiobert.config import ConfigError
from fedbiobert.checkpoint import check_resume_vocabulary, prepare_output_dir
from fedbiobert.host_memory import setup_host_memory
from fedbiobert.logs import setup_logging, warnings_from_rank0
from fedbiobert.config.preflight import check_run
from fedbiobert.roles import build_role
from fedbiobert.roles.base import NonFiniteError, RoundAborted
from fedbiobert.session import build_session
from fedbiobert.topology import Topology

logger = logging.getLogger("fedbiobert.run")
# A non-zero local rank that fails before training waits this long before it leaves: local rank 0 meets the
# same error (a bad option, bad data, an impossible partition) and says it, and the launcher, seeing it exit,
# stops the others. Leaving at once could get local rank 0 stopped before it had said anything.
STARTUP_REPORT_DELAY_S = 10.0


def check_config(argv):
    launch = launch_info_from_env()
    config, resume = check_run(argv, launch.world_size, launch.local_world_size)
    return config, launch, resume


def exit_code(error: Exception) -> int:
    """2: bad input; 3: the run stopped on purpose (too few clients, NaN/inf); 1: anything else."""
    if isinstance(error, ValueError):
        return 2
    return 3 if isinstance(error, (NonFiniteError, RoundAborted)) else 1


def report_failure(error: Exception, topology: Topology, launch, role) -> None:
    """One ERROR line naming who failed, where and why; a traceback only for an unexpected error."""
    if role is None and launch.local_rank != 0:  # said once per node when every rank fails alike
        time.sleep(STARTUP_REPORT_DELAY_S)
    expected = isinstance(error, (ValueError, PeerError, NonFiniteError, RoundAborted))  # no traceback
    where = f" in round {role.current_round + 1}" if role is not None else " while starting"
    logger.error("%s failed%s: %s: %s", topology.describe(launch.rank), where, type(error).__name__,
                 " ".join(str(error).split()), exc_info=not expected)


def main(argv: list[str] | None = None) -> int:
    started = time.time()
    try:
        rank = launch_info_from_env().rank
    except LaunchError as error:  # the launcher's variables are unreadable: every rank says so
        print(f"run.py: error: {error}", file=sys.stderr)
        return 2
    setup_logging(rank)
    try:
        with warnings_from_rank0(rank):  # every rank meets the same start-up warnings: say them once
            config, launch, resume = check_config(argv)
    except ConfigError as error:
        if launch_info_from_env().local_rank == 0:  # every rank fails alike: say it once per node
            print(f"run.py: error: {error}", file=sys.stderr)
        else:
            time.sleep(STARTUP_REPORT_DELAY_S)  # exiting first would get local rank 0 stopped before it speaks
        return 2
    setup_host_memory(config.mmap_threshold_mb, config.malloc_trim_seconds)  # before the model and data
    topology = Topology(launch.world_size, config.num_servers, config.n_clients, config.clients_per_round,
                        config.manual_seed)
    setup_logging(rank, topology.role(rank).value)
    try:
        groups = init_distributed(launch, topology, config.on_cuda, config.comm_timeout, config.round_timeout,
                                  config.backend)
    except LaunchError as error:  # MPI across nodes with no way to agree on rank 0's address
        print(f"run.py: error: {error}", file=sys.stderr)
        return 2
    role = None
    try:
        # A resumed run's clock continues where the checkpoint's left off: event times, the plot's
        # time axis and summary.json's wall_seconds are cumulative over every invocation.
        earlier_seconds = float(resume.get("run_seconds", 0.0)) if resume else 0.0
        session = build_session(config, launch, topology, groups, started - earlier_seconds)
        check_resume_vocabulary(config, resume, session.tokenizer)  # a trained tokenizer exists only now
        session.resume = resume
        role = build_role(session, build_algorithm(session))
        if rank == 0:  # only once everything is built: a failure before this leaves no output behind
            prepare_output_dir(config)
        role.run()
        role.finish(time.time() - started)
    except Exception as error:  # report who failed, then leave without waiting for peers
        report_failure(error, topology, launch, role)
        logging.shutdown()
        os._exit(exit_code(error))
    shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())

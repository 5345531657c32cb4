"""`fedbiobert-run`: check a run's options once, then start its processes with torchrun's agent.

    fedbiobert-run [--nproc_per_node N] RUN_OPTIONS...      (RUN_OPTIONS: see fedbiobert-run --help)

A bad option, path, corpus or checkpoint is one line on stderr and exit status 2, and no process is
started (under a bare `torchrun ... run.py` the same line is followed by torchrun's own report of the
failed workers). Without --nproc_per_node the world is worked out from the options (see
`default_world_size`). The processes then run on this machine as `torchrun --standalone` would start
them (a free port, a fresh rendezvous id). If a process fails, its error is above, and the launcher
ends with one line naming the rank and the exit status it passes on (2: bad input found after start-up,
3: the run stopped on purpose).

For several machines, use torchrun or SLURM directly (docs/clusters.md).
"""
from __future__ import annotations

import logging
import os
import sys

from fedbiobert.config import Config, ConfigError, build_parser, parse_config, validate_static

PROG = "fedbiobert-run"
RUN_MODULE = "fedbiobert.run"  # started as a module: an installed package needs no source folder
NPROC_FLAGS = ("--nproc_per_node", "--nproc-per-node")


def default_world_size(config: Config) -> int:
    """Processes a run needs when --nproc_per_node is not given: one per --gpu_ids entry when given;
    else --num_device servers plus one client process per server (the layout whose resumed runs
    reproduce exactly, and the one fedbert's parallel schedule needs); 1 without servers (fedavg and
    centralized: the silos train in turn in one client process)."""
    gpu_ids = config.gpu_id_list
    if gpu_ids:
        return len(gpu_ids)
    return max(1, 2 * config.num_servers)


def split_argv(argv: list[str]) -> tuple[int | None, list[str]]:
    """(--nproc_per_node's value or None, the options for run.py)."""
    nproc, rest, index = None, [], 0
    while index < len(argv):
        item = argv[index]
        flag, equals, value = item.partition("=")
        if flag in NPROC_FLAGS:
            if not equals:
                if index + 1 >= len(argv):
                    raise ConfigError(f"{flag} needs a number of processes (e.g. {flag} 3)")
                index, value = index + 1, argv[index + 1]
            nproc = _positive_int(flag, value)
        else:
            rest.append(item)
        index += 1
    return nproc, rest


def _positive_int(flag: str, value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise ConfigError(f"{flag} '{value}' is not a number of processes (accepted: an integer >= 1)")
    return number


def check(argv: list[str]) -> tuple[int, list[str]]:
    """Every check run.py makes on each rank, made once here: (world size, run.py's options)."""
    from fedbiobert.config.preflight import check_run
    nproc, run_argv = split_argv(argv)
    config = parse_config(run_argv)
    validate_static(config)
    world_size = nproc or default_world_size(config)
    check_run(run_argv, world_size, world_size)
    return world_size, run_argv


def set_omp_threads(world_size: int) -> None:
    """OMP_NUM_THREADS for the processes about to start, unless set: the CPUs this process may run on
    (its affinity, which they inherit) split between them. run.py sets torch's threads itself; saying so
    here keeps torchrun from setting OMP_NUM_THREADS=1 with a four-line warning."""
    from fedbiobert.comm.launch_env import threads_per_process
    os.environ.setdefault("OMP_NUM_THREADS", str(threads_per_process(world_size)))


def start(world_size: int, run_argv: list[str]) -> int:
    """torchrun --standalone --nproc_per_node WORLD -m fedbiobert.run RUN_ARGV, in this process; its exit status."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run
    set_omp_threads(world_size)
    args = parse_args(["--standalone", "--nproc_per_node", str(world_size), "--module", RUN_MODULE, *run_argv])
    try:
        run(args)
    except ChildFailedError as error:
        rank, failure = error.get_first_failure()
        status = failure.exitcode if failure.exitcode > 0 else 1
        print(f"{PROG}: error: rank {rank} exited with status {failure.exitcode} (its error is above); "
              f"the run stopped (exit status {status})", file=sys.stderr)
        return status
    except (SignalException, KeyboardInterrupt) as error:
        print(f"{PROG}: stopped by {getattr(error, 'sigval', 'SIGINT')!s}", file=sys.stderr)
        return 130
    return 0


def print_help() -> None:
    print(f"usage: {PROG} [--nproc_per_node N] RUN_OPTIONS...\n\n"
          "Checks the options once, then starts the run's processes on this machine (torchrun --standalone).\n\n"
          "  --nproc_per_node N    processes to start (default: one per --gpu_ids entry; else --num_device\n"
          "                        servers plus one client process per server; 1 for fedavg and centralized)\n\n"
          "RUN_OPTIONS (run.py's):")
    build_parser().print_help()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if "-h" in argv or "--help" in argv:
        print_help()
        return 0
    logging.getLogger("fedbiobert").setLevel(logging.ERROR)  # rank 0 of the run says the warnings once
    try:
        world_size, run_argv = check(argv)
    except ConfigError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 2
    return start(world_size, run_argv)


if __name__ == "__main__":
    sys.exit(main())

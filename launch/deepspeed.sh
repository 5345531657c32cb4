#!/usr/bin/env bash
# The DeepSpeed launcher, as the original FedBioBERT was started:
#   launch/deepspeed.sh [--hostfile FILE] [--num_gpus N] RUN_OPTIONS...
# DeepSpeed starts one process per GPU (per slot of each hostfile line) with RANK, WORLD_SIZE, LOCAL_RANK,
# LOCAL_SIZE, MASTER_ADDR and MASTER_PORT set, and appends --local_rank=N (accepted and ignored: LOCAL_RANK
# is read). Needs `pip install deepspeed` in .venv (not installed by the set-up); DS_ARGS adds launcher options.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
args=()
while [ $# -gt 0 ]; do
    case "$1" in
        --hostfile|--num_gpus|--num_nodes|--master_addr|--master_port|--include|--exclude)
            args+=("$1" "$2"); shift 2 ;;
        *) break ;;
    esac
done
# On one machine with a hostfile DeepSpeed reaches even localhost over ssh; DS_ARGS="--no_ssh --node_rank 0"
# starts it without (as on each node of a cluster without passwordless ssh).
read -r -a extra <<< "${DS_ARGS:-}"
read -r -a deepspeed <<< "${DEEPSPEED:-$ROOT/.venv/bin/deepspeed}"   # e.g. "python -m deepspeed.launcher.runner"
# ${a[@]+"${a[@]}"}: an empty array under set -u is an "unbound variable" error in bash before 4.4
exec ${deepspeed[@]+"${deepspeed[@]}"} ${args[@]+"${args[@]}"} ${extra[@]+"${extra[@]}"} "$ROOT/run.py" "$@"

#!/usr/bin/env bash
# One machine, torchrun: launch/local.sh [--nproc_per_node N] RUN_OPTIONS...   (default N: 3)
# e.g. launch/local.sh --nproc_per_node 5 --on_cuda True --gpu_ids 0,0,1,2,3 --num_device 1 ...
# (.venv/bin/fedbiobert-run does the same and checks the options once before it starts anything.)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
NPROC=3
if [ "${1:-}" = "--nproc_per_node" ]; then NPROC="$2"; shift 2; fi
exec "${PYTHON:-$ROOT/.venv/bin/python}" -m torch.distributed.run --standalone --nproc_per_node "$NPROC" \
    "$ROOT/run.py" "$@"

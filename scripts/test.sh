#!/usr/bin/env bash
# Set up (if needed) and run the test suite. Extra arguments go to pytest, e.g. -m "not slow".
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
bash scripts/setup_cluster_tools.sh  # mpirun, SLURM and munge for the launcher tests
bash scripts/get_base_model.sh  # the general model warm-start tests load (models/minilm-l6/)
exec .venv/bin/python -m pytest "$@"

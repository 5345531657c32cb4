#!/usr/bin/env bash
# Install the cluster launchers the tests run for real (tests/processes/test_cluster_mpi.py, tests/processes/test_cluster_slurm.py):
# Open MPI (mpirun), SLURM (slurmctld, slurmd, sbatch) and munge from the distribution's packages, and
# mpi4py (the optional `mpi` extra) into .venv. Idempotent: a second run checks and exits in well under a
# second. Without root or apt-get it says what is missing and leaves it to the tests to skip (with that reason).
set -euo pipefail
cd "$(dirname "$0")/.."
missing=()
for tool in mpirun:openmpi-bin mpicc:libopenmpi-dev slurmctld:slurmctld slurmd:slurmd sbatch:slurm-client \
            munged:munge; do
    command -v "${tool%%:*}" > /dev/null 2>&1 || [ -x "/usr/sbin/${tool%%:*}" ] || missing+=("${tool#*:}")
done
if [ "${#missing[@]}" -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get > /dev/null 2>&1; then
        echo "setup_cluster_tools: installing ${missing[*]} (apt-get)"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        # slurm-wlm pulls slurmctld, slurmd and slurm-client; munge is SLURM's authentication
        apt-get install -y -qq --no-install-recommends openmpi-bin libopenmpi-dev slurm-wlm munge > /dev/null
    else
        echo "setup_cluster_tools: ${missing[*]} missing and not installable here (needs root and apt-get);" \
             "the mpirun and SLURM tests will be skipped"
    fi
fi
if [ -x .venv/bin/python ] && ! .venv/bin/python -c "import mpi4py" > /dev/null 2>&1; then
    .venv/bin/python -m pip install --quiet "mpi4py>=3.1" || echo "setup_cluster_tools: mpi4py did not install" \
        "(optional: MASTER_ADDR must then be given to multi-node mpirun runs)"
fi

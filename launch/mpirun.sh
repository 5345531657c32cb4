#!/usr/bin/env bash
# Open MPI (or MPICH / Intel MPI's mpirun) with a hostfile, no torchrun:
#   launch/mpirun.sh [--hostfile FILE] [-np N] RUN_OPTIONS...       (default N: the hostfile's slots, else 3)
# Each rank reads its rank from OMPI_COMM_WORLD_* (PMI_* under MPICH). The ranks meet at the first host of
# the hostfile (rank 0's, as mpirun fills hosts in order), passed on as MASTER_ADDR; without a hostfile,
# at localhost. MPIRUN_ARGS adds mpirun options (e.g. --oversubscribe for more ranks than cores).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
HOSTFILE="" NP=""
while [ $# -gt 0 ]; do
    case "$1" in
        --hostfile|-hostfile) HOSTFILE="$2"; shift 2 ;;
        -np|-n) NP="$2"; shift 2 ;;
        *) break ;;
    esac
done
args=()
if [ -n "$HOSTFILE" ]; then
    [ -f "$HOSTFILE" ] || { echo "launch/mpirun.sh: error: --hostfile '$HOSTFILE' does not exist" >&2; exit 2; }
    args+=(--hostfile "$HOSTFILE")
    NP="${NP:-$(awk '!/^[[:space:]]*#/ && NF { sub(/.*slots=/, "", $0); total += $1 } END { print total }' "$HOSTFILE")}"
    export MASTER_ADDR="${MASTER_ADDR:-$(awk '!/^[[:space:]]*#/ && NF { print $1; exit }' "$HOSTFILE")}"
else
    export MASTER_ADDR="${MASTER_ADDR:-127.0.0.1}"
fi
if mpirun --version 2>/dev/null | grep -q "Open MPI"; then
    if [ "$(id -u)" = 0 ]; then args+=(--allow-run-as-root); fi   # containers and CI run as root
    args+=(-x MASTER_ADDR -x PATH -x PYTHONUNBUFFERED=1)           # Open MPI passes on only what -x names
    if [ -n "${MASTER_PORT:-}" ]; then args+=(-x MASTER_PORT); fi
    if [ -n "${OMP_NUM_THREADS:-}" ]; then args+=(-x OMP_NUM_THREADS); fi
else
    args+=(-genvall)                                               # MPICH / Intel MPI: pass the environment
fi
read -r -a extra <<< "${MPIRUN_ARGS:-}"
# ${a[@]+"${a[@]}"}: an empty array under set -u is an "unbound variable" error in bash before 4.4
exec mpirun ${args[@]+"${args[@]}"} ${extra[@]+"${extra[@]}"} -np "${NP:-3}" "${PYTHON:-$ROOT/.venv/bin/python}" \
    "$ROOT/run.py" "$@"

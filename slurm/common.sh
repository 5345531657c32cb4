# shellcheck shell=bash
# Shared by the batch scripts of this folder (sourced; not submitted itself): where things are, when to
# resume, and resubmission at the time limit.
#
# Resubmission: the scripts ask SLURM for SIGUSR1 five minutes before the time limit (--signal=B:USR1@300)
# and to allow requeueing (--requeue). On that signal the job requeues itself (same job id, same options);
# the next start finds OUTPUT_DIR/checkpoint/state.pt and continues after the last complete round
# (--from_checkpoint True). The round in progress at the signal is trained again. At most MAX_RESUBMITS times.
set -euo pipefail
ROOT="${FEDBIOBERT_ROOT:-${SLURM_SUBMIT_DIR:-$PWD}}"    # submit from the repository root (sbatch copies the script)
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
OUTPUT_DIR="${OUTPUT_DIR:-$ROOT/runs/slurm-${SLURM_JOB_ID:-local}}"   # the job id survives a requeue
MAX_RESUBMITS="${MAX_RESUBMITS:-10}"
cd "$ROOT"
[ -f "$ROOT/run.py" ] || { echo "slurm: error: no run.py in '$ROOT' (submit from the repository root or set" \
                                "FEDBIOBERT_ROOT)" >&2; exit 2; }
# From Slurm 22.05 srun no longer takes --cpus-per-task from the job: without this each task of a step
# gets (and, where the site binds tasks to CPUs, runs on) one CPU. srun reads SRUN_CPUS_PER_TASK as its -c.
if [ -n "${SLURM_CPUS_PER_TASK:-}" ]; then
    export SRUN_CPUS_PER_TASK="${SRUN_CPUS_PER_TASK:-$SLURM_CPUS_PER_TASK}"
fi

positive_int() {  # $1 as a plain integer >= 1, or nothing (status 1)
    case "$1" in ''|*[!0-9]*) return 1 ;; esac
    [ $((10#$1)) -ge 1 ] && echo $((10#$1))
}

gpus_per_node() {  # SLURM_GPUS_PER_NODE as --gpus-per-node gave it: 'N', 'TYPE:N', 'gpu:TYPE:N' or a list (summed)
    local total=0 item count
    local -a items
    IFS=, read -r -a items <<< "$1"
    for item in ${items[@]+"${items[@]}"}; do
        count="${item##*:}"
        case "$count" in ''|*[!0-9]*) return 1 ;; esac
        total=$((total + 10#$count))
    done
    echo "$total"
}

procs_per_node() {  # PROCS_PER_NODE, else the node's GPUs (SLURM_GPUS_ON_NODE, else SLURM_GPUS_PER_NODE), else 4
    if [ -n "${PROCS_PER_NODE:-}" ]; then
        positive_int "$PROCS_PER_NODE" && return
        echo "slurm: error: PROCS_PER_NODE '$PROCS_PER_NODE' is not a number of processes per node" \
             "(accepted: an integer >= 1)" >&2
        return 2
    fi
    local gpus="${SLURM_GPUS_ON_NODE:-}"
    if [ -z "$gpus" ] && [ -n "${SLURM_GPUS_PER_NODE:-}" ]; then
        gpus="$(gpus_per_node "$SLURM_GPUS_PER_NODE")" || {
            echo "slurm: error: SLURM_GPUS_PER_NODE '$SLURM_GPUS_PER_NODE' is not a GPU count (accepted: N," \
                 "TYPE:N, gpu:TYPE:N, or a comma-separated list of them); set PROCS_PER_NODE" >&2
            return 2; }
    fi
    positive_int "${gpus:-4}" && return
    echo "slurm: error: this job has no GPU on the node (SLURM_GPUS_ON_NODE / SLURM_GPUS_PER_NODE: '$gpus'):" \
         "set PROCS_PER_NODE to the number of processes to start per node" >&2
    return 2
}

resume_args() {  # --from_checkpoint True once a round has been checkpointed
    if [ -f "$OUTPUT_DIR/checkpoint/state.pt" ]; then
        echo "slurm: continuing from $OUTPUT_DIR/checkpoint (restart ${SLURM_RESTART_COUNT:-0})" >&2
        echo "--from_checkpoint True"
    fi
}

requeue_at_time_limit() {
    if [ "${SLURM_RESTART_COUNT:-0}" -ge "$MAX_RESUBMITS" ]; then
        echo "slurm: time limit near, $MAX_RESUBMITS resubmissions already made: not requeueing" >&2
        return
    fi
    echo "slurm: time limit near: requeueing job $SLURM_JOB_ID to continue from the last checkpoint" >&2
    # under set -e a failing command in a trap would end the batch shell, and with it the run's last minutes
    scontrol requeue "$SLURM_JOB_ID" || echo "slurm: requeue of job $SLURM_JOB_ID failed (scontrol's error is" \
        "above): the run goes on until the time limit; resubmit with the same OUTPUT_DIR to continue" \
        "from its last checkpoint" >&2
}

run_step() {  # the step in the background, so that the batch shell can take SIGUSR1 while it runs
    trap requeue_at_time_limit USR1
    "$@" &
    local step=$! status=0
    while true; do
        wait "$step" && return 0 || status=$?
        kill -0 "$step" 2>/dev/null || return "$status"   # still running: wait was cut short by the signal
    done
}

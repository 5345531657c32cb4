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
    scontrol requeue "$SLURM_JOB_ID"
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

#!/usr/bin/env bash
# Shared environment for every tide-megatron SLURM script: repository root, Python environment,
# cache and run directories, the torch.distributed rendezvous computed from SLURM variables, and an
# srun wrapper that checkpoints and requeues on the pre-timeout signal (--signal=B:USR1@120).
#
# Knobs (environment): TIDE_ROOT (default: the sbatch submit directory), TIDE_VENV (a virtualenv to
# activate; default ROOT/.venv when present; "none" to use the current environment), TIDE_RUNS_DIR
# (default ROOT/runs), TIDE_CACHE_DIR, TIDE_MASTER_PORT, TIDE_SRUN_ARGS (extra srun flags).

TIDE_ROOT="${TIDE_ROOT:-${SLURM_SUBMIT_DIR:-$(pwd)}}"
if [[ ! -f "$TIDE_ROOT/slurm/common.sh" ]]; then
  echo "tide slurm: TIDE_ROOT=$TIDE_ROOT is not the tide-megatron checkout (submit from its root or set TIDE_ROOT)" >&2
  exit 2
fi
export TIDE_ROOT
export TIDE_RUNS_DIR="${TIDE_RUNS_DIR:-$TIDE_ROOT/runs}"
export TIDE_CACHE_DIR="${TIDE_CACHE_DIR:-$HOME/.cache/tide-megatron}"

if [[ "${TIDE_VENV:-}" != "none" ]]; then
  venv="${TIDE_VENV:-$TIDE_ROOT/.venv}"
  if [[ -f "$venv/bin/activate" ]]; then
    # shellcheck disable=SC1091  # the virtualenv is created at set-up time
    source "$venv/bin/activate"
  elif [[ -n "${TIDE_VENV:-}" ]]; then
    echo "tide slurm: TIDE_VENV=$TIDE_VENV has no bin/activate" >&2
    exit 2
  fi
fi

export PYTHONUNBUFFERED=1
export OMP_NUM_THREADS="${SLURM_CPUS_PER_TASK:-1}"
export CUDA_DEVICE_MAX_CONNECTIONS=1        # megatron-core's TP/SP communication overlap needs it
export TORCH_NCCL_ASYNC_ERROR_HANDLING=1    # a failed rank errors out instead of hanging the job

# The rendezvous every task shares: the first host of the allocation, a port derived from the job
# id (so two jobs on one node do not collide), and one rank per SLURM task.
tide_rendezvous() {
  local nodelist="${SLURM_JOB_NODELIST:-${SLURM_NODELIST:-}}"
  if [[ -z "$nodelist" || -z "${SLURM_JOB_ID:-}" ]]; then
    echo "tide slurm: not inside a SLURM allocation (SLURM_JOB_ID / SLURM_JOB_NODELIST unset)" >&2
    return 2
  fi
  local hosts
  hosts="$(scontrol show hostnames "$nodelist")"   # no `| head`: under pipefail it can SIGPIPE scontrol
  MASTER_ADDR="${hosts%%$'\n'*}"
  MASTER_PORT="${TIDE_MASTER_PORT:-$((20000 + SLURM_JOB_ID % 20000))}"
  WORLD_SIZE="${SLURM_NTASKS:-$(( ${SLURM_JOB_NUM_NODES:-1} * ${SLURM_NTASKS_PER_NODE:-1} ))}"
  export MASTER_ADDR MASTER_PORT WORLD_SIZE
  echo "tide slurm: job ${SLURM_JOB_ID} rendezvous ${MASTER_ADDR}:${MASTER_PORT} world ${WORLD_SIZE}"
}

# The srun command line for one command per SLURM task, with RANK / LOCAL_RANK set from that task's
# SLURM_PROCID / SLURM_LOCALID (slurm/task.sh does the per-task part). Fills TIDE_SRUN_ARGV.
tide_srun_argv() {
  local extra=()
  if [[ -n "${TIDE_SRUN_ARGS:-}" ]]; then read -r -a extra <<<"$TIDE_SRUN_ARGS"; fi
  TIDE_SRUN_ARGV=(srun --kill-on-bad-exit=1 --cpu-bind=none "${extra[@]}" bash "$TIDE_ROOT/slurm/task.sh" "$@")
}

# Run one command per SLURM task in the foreground.
tide_srun() {
  tide_srun_argv "$@"
  "${TIDE_SRUN_ARGV[@]}"
}

# Like tide_srun, but srun runs in the background so the batch shell can take SLURM's warning signal:
# USR1 (sent --signal=B:USR1@120 before the time limit) is forwarded to srun, which passes it to the
# tasks; the trainer checkpoints and exits 0, and the job is requeued; it resumes with checkpoint.resume=auto.
# TERM (preemption, scancel) is forwarded too, but requeueing is then left to SLURM (--requeue).
tide_srun_requeueable() {
  TIDE_PREEMPT_SIGNAL=""
  TIDE_SRUN_PID=""
  trap 'TIDE_PREEMPT_SIGNAL=USR1; [[ -n "$TIDE_SRUN_PID" ]] && kill -USR1 "$TIDE_SRUN_PID" 2>/dev/null || true' USR1
  trap 'TIDE_PREEMPT_SIGNAL=TERM; [[ -n "$TIDE_SRUN_PID" ]] && kill -TERM "$TIDE_SRUN_PID" 2>/dev/null || true' TERM
  tide_srun_argv "$@"
  "${TIDE_SRUN_ARGV[@]}" &
  TIDE_SRUN_PID=$!
  if [[ -n "$TIDE_PREEMPT_SIGNAL" ]]; then kill "-$TIDE_PREEMPT_SIGNAL" "$TIDE_SRUN_PID" 2>/dev/null || true; fi
  local rc=0
  wait "$TIDE_SRUN_PID" || true
  while kill -0 "$TIDE_SRUN_PID" 2>/dev/null; do   # a trapped signal interrupts wait: wait again
    wait "$TIDE_SRUN_PID" || true
  done
  wait "$TIDE_SRUN_PID" || rc=$?   # bash keeps the exit status of a reaped background job
  trap - USR1 TERM
  if [[ "$TIDE_PREEMPT_SIGNAL" == USR1 ]]; then
    echo "tide slurm: time limit near; tasks exited with $rc after checkpointing; requeueing job $SLURM_JOB_ID"
    scontrol requeue "$SLURM_JOB_ID"
    return 0
  fi
  return "$rc"
}

# examples/<name>.yaml for a variant name such as pipeline_a_tide_cross; fails clearly if missing.
tide_config() {
  local cfg="examples/$1.yaml"
  if [[ ! -f "$TIDE_ROOT/$cfg" ]]; then
    echo "tide slurm: config $TIDE_ROOT/$cfg not found (variant '$1')" >&2
    return 2
  fi
  echo "$cfg"
}

#!/usr/bin/env bash
# One SLURM task: map SLURM's per-task ids to torch.distributed's, then run the command.
# Usage (through tide_srun in common.sh): srun bash slurm/task.sh COMMAND [ARGS...]
set -euo pipefail
: "${SLURM_PROCID:?slurm/task.sh must run under srun}"
export RANK="$SLURM_PROCID"
export LOCAL_RANK="${SLURM_LOCALID:-0}"
cd "${TIDE_ROOT:?TIDE_ROOT is set by slurm/common.sh}"
exec "$@"

#!/usr/bin/env bash
# Set up the environment (first run only) and run the tiny real-data TIDE demo on CPU.
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/setup_env.sh
. .venv/bin/activate
export TORCHDYNAMO_DISABLE=1
# Keep freed large tensors in the heap instead of unmapping them: every step re-allocates logits of
# ~100 MB, and a fresh mmap pays page faults for all of it again.
export MALLOC_MMAP_MAX_="${MALLOC_MMAP_MAX_:-0}" MALLOC_TRIM_THRESHOLD_="${MALLOC_TRIM_THRESHOLD_:-17179869184}"
exec tide-demo "$@"

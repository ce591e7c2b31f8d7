#!/usr/bin/env bash
# Set up the environment (first run only) and run the tiny real-data TIDE demo on CPU.
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/setup_env.sh
. .venv/bin/activate
export TORCHDYNAMO_DISABLE=1
exec tide-demo "$@"

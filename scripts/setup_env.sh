#!/usr/bin/env bash
# Create .venv (if missing) and install tide-megatron with its test dependencies.
# On a machine without CUDA the CPU build of torch 2.13.0 is installed first, so the open
# `torch>=2.6` requirement never pulls a multi-GB CUDA wheel.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null || PYTHON=python3
if [ ! -x .venv/bin/python ]; then "$PYTHON" -m venv .venv; fi
. .venv/bin/activate
stamp=.venv/.tide-installed
if [ ! -f "$stamp" ] || [ setup.py -nt "$stamp" ]; then
  python -m pip install -q --upgrade pip
  if ! command -v nvidia-smi >/dev/null 2>&1; then
    python -m pip install -q "torch==2.13.0"
  fi
  python -m pip install -q -e ".[dev,eval]"
  touch "$stamp"
fi

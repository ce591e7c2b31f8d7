#!/usr/bin/env bash
# Create .venv (if missing) and install tide-megatron with its test dependencies.
# On a machine without CUDA the CPU build of torch 2.13.0 is installed first, so the open
# `torch>=2.6` requirement never pulls a multi-GB CUDA wheel.
# Prints one line per step; pip's own output goes to a log that is shown only when a step fails.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null || PYTHON=python3
log="$(mktemp "${TMPDIR:-/tmp}/tide-setup.XXXXXX")"
trap 'rm -f "$log"' EXIT

# step DESCRIPTION COMMAND...: run COMMAND with its output in the log; one line, or the log's tail on failure.
step() {
  local what="$1" start=$SECONDS rc=0
  shift
  printf '[setup] %s ... ' "$what"
  "$@" >>"$log" 2>&1 || rc=$?
  if (( rc != 0 )); then
    echo "failed (exit $rc)"
    echo "---- the last 80 lines of its output ----" >&2
    tail -n 80 "$log" >&2
    exit "$rc"
  fi
  echo "done ($((SECONDS - start)) s)"
}

if [ ! -x .venv/bin/python ]; then step "creating .venv with $PYTHON" "$PYTHON" -m venv .venv; fi
. .venv/bin/activate
stamp=.venv/.tide-installed
if [ ! -f "$stamp" ] || [ setup.py -nt "$stamp" ]; then
  step "upgrading pip" python -m pip install -q --upgrade pip
  if ! command -v nvidia-smi >/dev/null 2>&1; then
    step "installing torch 2.13.0 (CPU build)" python -m pip install -q "torch==2.13.0"
  fi
  step "installing tide-megatron and its dependencies" python -m pip install -q -e ".[dev]"
  touch "$stamp"
else
  echo "[setup] .venv is up to date"
fi

#!/usr/bin/env bash
# Create .venv (if missing) and install tide-megatron, plus the optional extras named by --extras
# (comma-separated, e.g. --extras dev,eval for the test suite; the demo needs none).
#   bash scripts/setup_env.sh [--extras dev,eval]
# The torch build is chosen by TIDE_TORCH, never by looking at the machine that runs this (a cluster's
# login node usually has no GPU):
#   TIDE_TORCH=cpu  (default: CI and laptops) the CPU build of torch 2.13.0, so the open `torch>=2.6`
#                   requirement never pulls a multi-GB CUDA wheel (where pip would find only the CUDA
#                   wheel, set TIDE_TORCH_INDEX=https://download.pytorch.org/whl/cpu);
#   TIDE_TORCH=cuda (GPU clusters) the CUDA build from TIDE_TORCH_INDEX (default: PyTorch's cu128 index);
#                   then `pip install -e ".[gpu]"` for Transformer Engine.
# The installed build is checked against the choice.
# Prints one line per step; pip's own output goes to a log that is shown only when a step fails.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null || PYTHON=python3
TIDE_TORCH="${TIDE_TORCH:-cpu}"
extras=""
while (( $# )); do
  case "$1" in
    --extras) extras="${2:-}"; shift 2 ;;
    --extras=*) extras="${1#--extras=}"; shift ;;
    *) echo "setup_env.sh: unknown argument '$1' (expected --extras LIST)" >&2; exit 2 ;;
  esac
done
case "$TIDE_TORCH" in
  cpu | cuda) ;;
  *) echo "setup_env.sh: TIDE_TORCH must be cpu or cuda, got '$TIDE_TORCH'" >&2; exit 2 ;;
esac
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
# The stamp records the torch build and every extra installed so far; an install is needed when setup.py
# changed, the build differs, or an extra asked for now is missing.
installed_extras="$(sed -n 's/^extras=//p' "$stamp" 2>/dev/null || true)"
wanted="$(printf '%s\n' ${installed_extras//,/ } ${extras//,/ } | sort -u | paste -sd, -)"
missing=0
for e in ${extras//,/ }; do [[ ",$installed_extras," == *",$e,"* ]] || missing=1; done
if [ ! -f "$stamp" ] || [ setup.py -nt "$stamp" ] || [ "$(sed -n 's/^torch=//p' "$stamp")" != "$TIDE_TORCH" ] \
    || (( missing )); then
  step "upgrading pip" python -m pip install -q --upgrade pip
  index=()
  if [ "$TIDE_TORCH" = cuda ]; then index=(--index-url "${TIDE_TORCH_INDEX:-https://download.pytorch.org/whl/cu128}")
  elif [ -n "${TIDE_TORCH_INDEX:-}" ]; then index=(--index-url "$TIDE_TORCH_INDEX"); fi
  step "installing torch 2.13.0 ($TIDE_TORCH build)" python -m pip install -q "torch==2.13.0" "${index[@]}"
  # Check the build that was installed, not the machine: a CUDA build on a GPU-less login node is fine.
  example=https://download.pytorch.org/whl/cpu
  if [ "$TIDE_TORCH" = cuda ]; then example=https://download.pytorch.org/whl/cu128; fi
  step "checking the torch build" python - "$TIDE_TORCH" "$example" <<'PY'
import sys

import torch

want, example = sys.argv[1:]
cuda = torch.version.cuda
if (want == "cuda") != bool(cuda):
    build = f"a CUDA {cuda} build" if cuda else "a CPU-only build"
    sys.exit(f"setup_env.sh: TIDE_TORCH={want} but the installed torch {torch.__version__} is {build}; "
             f"set TIDE_TORCH_INDEX to an index with the {want} build (e.g. {example})")
PY
  target="."
  if [ -n "$wanted" ]; then target=".[$wanted]"; fi
  step "installing tide-megatron${wanted:+ with extras $wanted} and its dependencies" python -m pip install -q -e "$target"
  printf 'torch=%s\nextras=%s\n' "$TIDE_TORCH" "$wanted" >"$stamp"
else
  echo "[setup] .venv is up to date"
fi

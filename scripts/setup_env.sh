#!/usr/bin/env bash
# Create .venv (if missing) and install tide-megatron with its test dependencies.
# The torch build is chosen by TIDE_TORCH, never by looking at the machine that runs this (a cluster's
# login node usually has no GPU):
#   TIDE_TORCH=cpu  (default: CI and laptops) the CPU build of torch 2.13.0, so the open `torch>=2.6`
#                   requirement never pulls a multi-GB CUDA wheel (where pip would find only the CUDA
#                   wheel, set TIDE_TORCH_INDEX=https://download.pytorch.org/whl/cpu);
#   TIDE_TORCH=cuda (GPU clusters) the CUDA build from TIDE_TORCH_INDEX (default: PyTorch's cu128 index);
#                   then `pip install -e ".[gpu]"` for Transformer Engine.
# The installed build is checked against the choice.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null || PYTHON=python3
TIDE_TORCH="${TIDE_TORCH:-cpu}"
case "$TIDE_TORCH" in
  cpu | cuda) ;;
  *) echo "setup_env.sh: TIDE_TORCH must be cpu or cuda, got '$TIDE_TORCH'" >&2; exit 2 ;;
esac
if [ ! -x .venv/bin/python ]; then "$PYTHON" -m venv .venv; fi
. .venv/bin/activate
stamp=.venv/.tide-installed
if [ ! -f "$stamp" ] || [ setup.py -nt "$stamp" ] || [ "$(cat "$stamp")" != "torch=$TIDE_TORCH" ]; then
  python -m pip install -q --upgrade pip
  index=()
  if [ "$TIDE_TORCH" = cuda ]; then index=(--index-url "${TIDE_TORCH_INDEX:-https://download.pytorch.org/whl/cu128}")
  elif [ -n "${TIDE_TORCH_INDEX:-}" ]; then index=(--index-url "$TIDE_TORCH_INDEX"); fi
  python -m pip install -q "torch==2.13.0" "${index[@]}"
  # Check the build that was installed, not the machine: a CUDA build on a GPU-less login node is fine.
  example=https://download.pytorch.org/whl/cpu
  if [ "$TIDE_TORCH" = cuda ]; then example=https://download.pytorch.org/whl/cu128; fi
  python - "$TIDE_TORCH" "$example" <<'PY'
import sys

import torch

want, example = sys.argv[1:]
cuda = torch.version.cuda
if (want == "cuda") != bool(cuda):
    build = f"a CUDA {cuda} build" if cuda else "a CPU-only build"
    sys.exit(f"setup_env.sh: TIDE_TORCH={want} but the installed torch {torch.__version__} is {build}; "
             f"set TIDE_TORCH_INDEX to an index with the {want} build (e.g. {example})")
PY
  python -m pip install -q -e ".[dev,eval]"
  echo "torch=$TIDE_TORCH" >"$stamp"
fi

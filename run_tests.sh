#!/usr/bin/env bash
# The whole test suite: single-process tests, then every multi-rank test in one 2-rank gloo session.
# Usage: ./run_tests.sh [extra pytest args for both phases]
# TIDE_TEST_CPU_HOG=1 runs one busy loop per core beside the multi-rank phase (a loaded machine: collectives
# must survive a slow rank, and no leaked process group may multiply the threads competing for the cores).
set -euo pipefail
cd "$(dirname "$0")"
if [ -z "${VIRTUAL_ENV:-}" ] && [ -d .venv ]; then . .venv/bin/activate; fi
export TORCHDYNAMO_DISABLE=1 OMP_NUM_THREADS=1 TIDE_DIST_TIMEOUT_S="${TIDE_DIST_TIMEOUT_S:-120}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p .cache/test-logs
python -m pytest tests -q -x --timeout=900 "$@"
rm -rf .cache/test-logs/torchrun
hogs=()
if [ "${TIDE_TEST_CPU_HOG:-0}" = 1 ]; then
  for _ in $(seq "$(nproc)"); do python -c "while True: pass" & hogs+=($!); done
  trap 'kill "${hogs[@]}" 2>/dev/null || true' EXIT
  echo "multi-rank phase beside ${#hogs[@]} busy loops"
fi
status=0
torchrun --nproc_per_node=2 --log-dir .cache/test-logs/torchrun --redirects 1:3 \
  -m pytest tests/multirank -q -x -p no:cacheprovider --timeout=900 "$@" || status=$?
if [ "$status" -ne 0 ]; then
  echo "---- rank 1 output ----"; find .cache/test-logs/torchrun -name 'std*.log' -path '*1*' -exec tail -n 80 {} \; || true
fi
exit "$status"

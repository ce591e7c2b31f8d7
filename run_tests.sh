#!/usr/bin/env bash
# The whole test suite: single-process tests, then every multi-rank test in one 2-rank gloo session, then the
# four-rank layouts in one 4-rank gloo session (4 ranks time-share the cores; the models are tiny).
# Usage: ./run_tests.sh [extra pytest args for both phases]
# TIDE_TEST_CPU_HOG=1 runs one busy loop per core beside the multi-rank phase (a loaded machine: collectives
# must survive a slow rank, and no leaked process group may multiply the threads competing for the cores).
set -euo pipefail
cd "$(dirname "$0")"
# Outside a virtual environment: set up .venv with the test extras (first run; a no-op once installed).
if [ -z "${VIRTUAL_ENV:-}" ]; then bash scripts/setup_env.sh --extras dev,eval; . .venv/bin/activate; fi
export TORCHDYNAMO_DISABLE=1 OMP_NUM_THREADS=1 TIDE_DIST_TIMEOUT_S="${TIDE_DIST_TIMEOUT_S:-120}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p .cache/test-logs
# Two pytest workers (pytest-xdist), each given whole test files: the tests run one torch thread each, so both
# cores work through the single-process phase. TIDE_TEST_WORKERS=0 runs it in this one process.
python -m pytest tests -q -x --timeout=900 -n "${TIDE_TEST_WORKERS:-2}" --dist loadfile "$@"
hogs=()
if [ "${TIDE_TEST_CPU_HOG:-0}" = 1 ]; then
  for _ in $(seq "$(nproc)"); do python -c "while True: pass" & hogs+=($!); done
  trap 'kill "${hogs[@]}" 2>/dev/null || true' EXIT
  echo "multi-rank phase beside ${#hogs[@]} busy loops"
fi
# One torchrun session per world size; rank 0 prints, the other ranks' output goes to the log dir and is
# shown when the session fails.
multirank() {
  local n=$1 dir=$2 status=0
  rm -rf ".cache/test-logs/torchrun$n"
  torchrun --nproc_per_node="$n" --log-dir ".cache/test-logs/torchrun$n" --redirects "$(seq -s, 1 $((n - 1)) | sed 's/,/:3,/g'):3" \
    -m pytest "$dir" -q -x -p no:cacheprovider --timeout=900 "${@:3}" || status=$?
  if [ "$status" -ne 0 ]; then
    for r in $(seq 1 $((n - 1))); do
      echo "---- rank $r output ----"
      find ".cache/test-logs/torchrun$n" -name 'std*.log' -path "*/$r/*" -exec tail -n 80 {} \; || true
    done
  fi
  return "$status"
}
multirank 2 tests/multirank "$@"
multirank 4 tests/multirank4 "$@"

#!/usr/bin/env bash
# Submit the paper's ablation: one job array per pipeline (A and B each on 1 node x 8 GPUs, the paper's global batch),
# every variant x seed as one array element. Extra arguments are passed to tide-train as overrides.
# Usage: slurm/submit_ablation.sh [--seeds "42 43 44"] [--pipelines "a b"] [key=value ...]
#   --seeds LIST       seeds, space or comma separated (default: $TIDE_ABLATION_SEEDS, else 42 43 44)
#   --pipelines LIST   which pipelines to submit (default: $TIDE_ABLATION_PIPELINES, else a b)
# Then, once the arrays are done: tide-report runs/ablation/pipeline_a_* --baseline pipeline_a_calm
# (and pipeline_b_* against pipeline_b_kl).
set -euo pipefail
# shellcheck source=SCRIPTDIR/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

seeds="${TIDE_ABLATION_SEEDS:-42 43 44}"
pipelines="${TIDE_ABLATION_PIPELINES:-a b}"
while (( $# > 0 )); do
  case "$1" in
    --seeds) seeds="${2:?--seeds needs a list of seeds}"; shift 2 ;;
    --seeds=*) seeds="${1#--seeds=}"; shift ;;
    --pipelines) pipelines="${2:?--pipelines needs a list}"; shift 2 ;;
    --pipelines=*) pipelines="${1#--pipelines=}"; shift ;;
    *) break ;;
  esac
done
seeds="${seeds//,/ }"
read -r -a seed_list <<<"$seeds"
for s in "${seed_list[@]}"; do
  if [[ ! "$s" =~ ^-?[0-9]+$ ]]; then
    echo "submit_ablation: --seeds: expected integers, got '$s'" >&2
    exit 2
  fi
done
if (( ${#seed_list[@]} == 0 )); then
  echo "submit_ablation: --seeds: expected at least one seed" >&2
  exit 2
fi
for pipeline in ${pipelines//,/ }; do
  case "$pipeline" in
    a) nodes=1; variants="pipeline_a_calm pipeline_a_tide_cross pipeline_a_tide_shared" ;;
    b) nodes=1; variants="pipeline_b_kl pipeline_b_tide_cross pipeline_b_tide_shared" ;;
    *) echo "submit_ablation: unknown pipeline '$pipeline' (expected a or b)" >&2; exit 2 ;;
  esac
  read -r -a variant_list <<<"$variants"
  for v in "${variant_list[@]}"; do tide_config "$v" >/dev/null; done
  last=$(( ${#variant_list[@]} * ${#seed_list[@]} - 1 ))
  (cd "$TIDE_ROOT" && TIDE_ABLATION_VARIANTS="$variants" TIDE_ABLATION_SEEDS="$seeds" \
    sbatch --export=ALL --nodes="$nodes" --array="0-$last" --job-name="tide-ablation-$pipeline" \
    slurm/ablation.sbatch "$@")
done

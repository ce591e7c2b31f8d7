#!/usr/bin/env bash
# Submit the paper's ablation: one job array per pipeline (A and B each on 1 node x 8 GPUs, the paper's global batch),
# every variant x seed as one array element. Extra arguments are passed to tide-train as overrides.
# Usage: slurm/submit_ablation.sh [key=value ...]
#   TIDE_ABLATION_SEEDS="42 43 44"   seeds (default three)
#   TIDE_ABLATION_PIPELINES="a b"    which pipelines to submit
set -euo pipefail
# shellcheck source=SCRIPTDIR/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

seeds="${TIDE_ABLATION_SEEDS:-42 43 44}"
read -r -a seed_list <<<"$seeds"
for pipeline in ${TIDE_ABLATION_PIPELINES:-a b}; do
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

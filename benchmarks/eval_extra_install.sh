#!/usr/bin/env bash
# Install cost of the `eval` extra (lm-eval[math], the version setup.py pins) in a throwaway virtualenv,
# with the empty virtualenv as the baseline measured in the same run: wall time of the pip install,
# the size it adds, the largest packages it brings. Needs network access to the package registry.
# The harness core does not need torch, so no torch is installed here; packages the base install also
# has (numpy, jinja2, pyyaml, tqdm, ...) are counted, so the figure is an upper bound on what the extra
# adds to a tide-megatron environment.
# Usage: bash benchmarks/eval_extra_install.sh [PYTHON]
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${1:-python3.11}"
spec="$(sed -n 's/.*"eval": \["\([^"]*\)"\].*/\1/p' setup.py)"
[[ -n "$spec" ]] || { echo "eval_extra_install: no eval extra found in setup.py" >&2; exit 2; }
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
"$PYTHON" -m venv "$work/venv"
"$work/venv/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
site="$("$work/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
base_kb="$(du -sk "$site" | cut -f1)"
base_pkgs="$("$work/venv/bin/python" -m pip list --format=freeze | wc -l)"
start="$(date +%s%N)"
"$work/venv/bin/python" -m pip install -q --disable-pip-version-check "$spec"
end="$(date +%s%N)"
after_kb="$(du -sk "$site" | cut -f1)"
after_pkgs="$("$work/venv/bin/python" -m pip list --format=freeze | wc -l)"
echo "extra: $spec"
echo "pip install wall time: $(((end - start) / 100000000 / 10)).$(((end - start) / 100000000 % 10)) s (download included)"
echo "site-packages: $((base_kb / 1024)) MB empty venv (baseline) -> $((after_kb / 1024)) MB, +$(((after_kb - base_kb) / 1024)) MB"
echo "distributions: $base_pkgs -> $after_pkgs (+$((after_pkgs - base_pkgs)))"
echo "largest directories of site-packages afterwards (pip and setuptools were there before):"
du -sk "$site"/* 2>/dev/null | sort -rn | head -12 | awk '{printf "  %6.1f MB  %s\n", $1 / 1024, $2}' | sed "s|$site/||"

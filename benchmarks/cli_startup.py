"""Start-up time of the commands (``--help``): a git ref (the baseline) vs the working tree, in one run.

    python benchmarks/cli_startup.py --baseline main --repeats 7

Each command runs in a fresh interpreter, alternating baseline and working tree so that machine noise hits
both alike; the table shows the median and the fastest run of each.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COMMANDS = ("tide_megatron.cli.train", "tide_megatron.cli.demo", "tide_megatron.cli.convert",
            "tide_megatron.cli.preprocess", "tide_megatron.cli.evaluate")


def export_ref(ref: str, dest: Path) -> Path:
    """The package as committed at ``ref``, unpacked under ``dest``."""
    archive = dest / "ref.tar"
    with open(archive, "wb") as out:
        subprocess.run(["git", "-C", str(REPO), "archive", ref, "tide_megatron"], stdout=out, check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(dest, filter="data")
    return dest


def environment(tree: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree), "TORCHDYNAMO_DISABLE": "1", "OMP_NUM_THREADS": "1"}
    found = subprocess.run([sys.executable, "-c", "import tide_megatron; print(tide_megatron.__file__)"], cwd=tree,
                           env=env, capture_output=True, text=True, check=True).stdout.strip()
    if not Path(found).resolve().is_relative_to(tree.resolve()):
        raise SystemExit(f"cli_startup: {tree} imports tide_megatron from {found}, not from itself")
    return env


def time_once(module: str, tree: Path, env: dict) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", module, "--help"], cwd=tree, env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--baseline", default="main", help="git ref to compare with (default: main)")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--commands", nargs="+", default=list(COMMANDS))
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="tide-startup-") as tmp:
        trees = {args.baseline: export_ref(args.baseline, Path(tmp)), "working tree": REPO}
        envs = {name: environment(tree) for name, tree in trees.items()}
        print(f"{'command':38s} {'tree':14s} {'median s':>9s} {'min s':>7s}")
        for module in args.commands:
            times: dict[str, list[float]] = {name: [] for name in trees}
            for name in trees:  # one untimed warm-up each: the page cache, .pyc files
                time_once(module, trees[name], envs[name])
            for _ in range(args.repeats):
                for name in trees:
                    times[name].append(time_once(module, trees[name], envs[name]))
            for name, values in times.items():
                print(f"{module + ' --help':38s} {name:14s} {statistics.median(values):9.2f} {min(values):7.2f}")


if __name__ == "__main__":
    main()

"""tide-ablate: run variants x seeds one after another on this machine, then report them.

  tide-ablate --output-dir OUT --seeds 42 43 44 --config examples/pipeline_a_calm.yaml \\
      --variant ce_only examples/pipeline_a_calm.yaml objective.mode=ce [--set KEY=VALUE ...] \\
      [--nproc-per-node N] [--baseline VARIANT]

Each (variant, seed) is one ``tide-train --config CFG output_dir=OUT/<variant>/seed<S> optim.seed=<S>
checkpoint.resume=auto [variant overrides] [--set overrides]`` (under ``torchrun --nproc_per_node=N`` when
N > 1), the same layout slurm/ablation.sbatch writes; seeds go round first, so every seed's pair is there
early. A run whose results.json says complete is skipped, so a rerun finishes an interrupted ablation. A
failed run does not stop the others; the command exits 1 if any failed. At the end tide-report writes
OUT/report (paired against --baseline when given).
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Optional, Sequence

from tide_megatron.config import ConfigError, load_config
from tide_megatron.report.build import build_report
from tide_megatron.report.render import write_report
from tide_megatron.report.run_dir import read_run, read_runs


def parse_seeds(items: Sequence[str]) -> list[int]:
    """``["42", "43,44"]`` -> ``[42, 43, 44]``; each seed once, integers only."""
    seeds: list[int] = []
    for item in items:
        for part in item.replace(",", " ").split():
            try:
                seed = int(part)
            except ValueError:
                raise ValueError(f"--seeds: expected integers, got {part!r}") from None
            if seed in seeds:
                raise ValueError(f"--seeds: seed {seed} is given twice")
            seeds.append(seed)
    if not seeds:
        raise ValueError("--seeds: expected at least one seed")
    return seeds


def parse_variants(configs: Sequence[str], variants: Sequence[Sequence[str]]) -> dict[str, tuple[str, list[str]]]:
    """name -> (config file, overrides): ``--config FILE`` is named after the file, ``--variant NAME FILE ...``."""
    out: dict[str, tuple[str, list[str]]] = {}
    items = [(Path(c).stem, c, []) for c in configs] + [(v[0], v[1], list(v[2:])) for v in variants]
    for name, cfg, overrides in items:
        if not name or "/" in name or name.startswith("."):
            raise ValueError(f"--variant {name!r}: expected a plain directory name")
        if name in out:
            raise ValueError(f"variant {name!r} is given twice (rename one with --variant NAME CONFIG ...)")
        bad = [o for o in overrides if "=" not in o]
        if bad:
            raise ValueError(f"--variant {name}: expected KEY=VALUE overrides after the config, got {bad}")
        out[name] = (cfg, overrides)
    if not out:
        raise ValueError("expected at least one --config FILE or --variant NAME FILE [KEY=VALUE ...]")
    return out


def run_overrides(out_dir: Path, seed: int, variant_overrides: Sequence[str], common: Sequence[str]) -> list[str]:
    """The tide-train overrides of one (variant, seed) run: its directory, its seed, resume, then the user's."""
    return [f"output_dir={out_dir}", f"optim.seed={seed}", "checkpoint.resume=auto", *variant_overrides, *common]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_command(config: str, overrides: Sequence[str], nproc: int) -> list[str]:
    """``python -m tide_megatron.cli.train`` (one process) or under ``torch.distributed.run`` (N processes)."""
    launcher = [sys.executable]
    if nproc > 1:
        launcher += ["-m", "torch.distributed.run", f"--nproc_per_node={nproc}", f"--master_port={_free_port()}"]
    return [*launcher, "-m", "tide_megatron.cli.train", "--config", config, *overrides]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tide-ablate", description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--output-dir", required=True, help="runs go to OUT/<variant>/seed<S>, the report to OUT/report")
    p.add_argument("--seeds", nargs="+", required=True, help="seeds (space or comma separated), e.g. 42 43 44")
    p.add_argument("--config", action="append", default=[], metavar="FILE",
                   help="a variant named after its config file (repeatable)")
    p.add_argument("--variant", action="append", nargs="+", default=[], metavar="ITEM",
                   help="NAME FILE [KEY=VALUE ...]: a named variant, its config and its own overrides (repeatable)")
    p.add_argument("--set", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                   help="overrides for every run")
    p.add_argument("--nproc-per-node", type=int, default=1, help="ranks per run (torchrun when > 1)")
    p.add_argument("--baseline", help="variant the report pairs the others against")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if any(len(v) < 2 for v in args.variant):
            raise ValueError("--variant: expected NAME FILE [KEY=VALUE ...]")
        seeds = parse_seeds(args.seeds)
        variants = parse_variants(args.config, args.variant)
        if args.baseline is not None and args.baseline not in variants:
            raise ValueError(f"--baseline {args.baseline!r}: not one of the variants ({', '.join(variants)})")
        if args.nproc_per_node < 1:
            raise ValueError(f"--nproc-per-node: expected >= 1, got {args.nproc_per_node}")
        out = Path(args.output_dir).expanduser().resolve()
        for name, (cfg, overrides) in variants.items():  # every config is valid before hours are spent
            load_config(cfg, run_overrides(out / name / f"seed{seeds[0]}", seeds[0], overrides, args.set))
    except (ValueError, ConfigError) as err:
        print(f"tide-ablate: error: {err}", file=sys.stderr)
        return 2
    failed: list[str] = []
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    for seed in seeds:
        for name, (cfg, overrides) in variants.items():
            run_dir = out / name / f"seed{seed}"
            if read_run(run_dir).complete:
                print(f"[tide-ablate] {name} seed {seed}: complete in {run_dir}, skipped", flush=True)
                continue
            run_dir.mkdir(parents=True, exist_ok=True)
            print(f"[tide-ablate] {name} seed {seed} -> {run_dir}", flush=True)
            cmd = train_command(cfg, run_overrides(run_dir, seed, overrides, args.set), args.nproc_per_node)
            rc = subprocess.call(cmd, env=env)
            if rc != 0 or not read_run(run_dir).complete:
                failed.append(f"{name} seed {seed} (exit {rc})")
                print(f"[tide-ablate] {name} seed {seed}: FAILED (exit {rc}); continuing", file=sys.stderr, flush=True)
    try:
        report = build_report(read_runs([str(out / name) for name in variants]), baseline=args.baseline)
        paths = write_report(report, str(out / "report"))
    except ValueError as err:
        print(f"tide-ablate: report: {err}", file=sys.stderr)
        return 1
    print(f"[tide-ablate] report: {paths['markdown']} ({', '.join(p.name for p in paths.values())})")
    for c in report.comparisons:
        print(f"[tide-ablate] {c.statement}")
    if failed:
        print(f"tide-ablate: {len(failed)} run(s) failed: {'; '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

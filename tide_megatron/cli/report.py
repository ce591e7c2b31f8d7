"""tide-report: one report over many runs (variants x seeds), with intervals over seeds.

  tide-report RUN_DIR... [--baseline VARIANT] [--metrics M1,M2] [--confidence 0.95] [--output-dir report]

RUN_DIR is a run directory (a tide-train output_dir) or any directory above some: the layout
``<variant>/seed<seed>`` that slurm/ablation.sbatch and tide-ablate write is read as variant x seed; other
runs take the variant from their config's name. Writes report.md, report.json, loss_curves.png and
metrics.png: mean, standard deviation and a Student-t confidence interval per variant and metric; with
--baseline, the paired difference of every variant against it over the seeds both ran. Runs that failed,
were stopped or never finished are listed and never averaged; a seed one side lacks is flagged.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from tide_megatron.report.build import build_report
from tide_megatron.report.render import to_markdown, write_report
from tide_megatron.report.run_dir import read_runs


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tide-report", description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories, or directories above them")
    p.add_argument("--baseline", help="variant to pair every other variant against (same seeds)")
    p.add_argument("--metrics", help="comma list of metrics (default: every heldout/ and lm_eval/ metric found)")
    p.add_argument("--confidence", type=float, default=0.95, help="confidence level of the intervals")
    p.add_argument("--curve", default="loss/ce", help="logged scalar for the loss-curve plot")
    p.add_argument("--output-dir", default="report", help="where report.md, report.json and the PNGs go")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if not 0.0 < args.confidence < 1.0:
        print(f"tide-report: error: --confidence: expected a value in (0, 1), got {args.confidence}", file=sys.stderr)
        return 2
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()] if args.metrics else None
    try:
        report = build_report(read_runs(args.run_dirs), baseline=args.baseline, metrics=metrics,
                              confidence=args.confidence, curve_key=args.curve)
        paths = write_report(report, args.output_dir)
    except (ValueError, OSError) as err:
        print(f"tide-report: error: {err}", file=sys.stderr)
        return 2
    print(to_markdown(report), end="")
    print(f"\n[tide-report] wrote {', '.join(str(p) for p in paths.values())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""tide-demo: the whole TIDE-Cross pipeline on real tokenizers and real text, small enough for a 2-core CPU.

  tide-demo [--output-dir outputs/demo] [--steps N] [--teacher-steps N] [--quick] [--seed S]

The phases, their caching and the outputs are described in tide_megatron/demo/pipeline.py.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from tide_megatron.cli.errors import cli_errors
from tide_megatron.demo.pipeline import DemoError, run


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tide-demo", description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--output-dir", default="outputs/demo", help="results directory (replaced when the run ends)")
    p.add_argument("--steps", type=int, help="student optimizer steps for each of the two runs")
    p.add_argument("--teacher-steps", type=int, help="teacher pretraining steps (a new value retrains it)")
    p.add_argument("--quick", action="store_true", help="a seconds-long smoke run with tiny step counts")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: all CPUs)")
    return p


@cli_errors("tide-demo")
def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except (DemoError, ValueError, FileNotFoundError, FileExistsError) as err:
        print(f"tide-demo: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tide-demo: interrupted; no output was written", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""tide-demo: TIDE-Cross against CE-only over 3 seeds, on real tokenizers and real text, on a 2-core CPU.

  tide-demo [--output-dir outputs/demo] [--seeds 0 1 2] [--steps N] [--teacher-steps N] [--quick]

The phases, their caching and the outputs are described in tide_megatron/demo/pipeline.py.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence

from tide_megatron.cli.errors import cli_errors
from tide_megatron.demo.settings import DemoError, DemoSettings, check_run


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tide-demo", description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--output-dir", default="outputs/demo", help="results directory (replaced when the run ends)")
    p.add_argument("--seeds", type=int, nargs="+", help="student seeds (default 0 1 2; --quick: 0 1)")
    p.add_argument("--steps", type=int, help="student optimizer steps of each run")
    p.add_argument("--teacher-steps", type=int, help="teacher pretraining steps (a new value retrains it)")
    p.add_argument("--quick", action="store_true", help="a seconds-long smoke run with tiny step counts")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: all CPUs)")
    return p


@cli_errors("tide-demo")
def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    s = DemoSettings.quick() if args.quick else DemoSettings()
    if args.seeds is not None:
        s.seeds = tuple(args.seeds)
    if args.steps is not None:
        s.student_steps = args.steps
    if args.teacher_steps is not None:
        s.teacher_steps = args.teacher_steps
    try:
        check_run(s, args.output_dir)  # bad flags fail in a second, before torch and megatron-core load
        os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")  # megatron's jit_fuser would compile kernels for minutes
        # local: the pipeline loads torch, megatron-core and transformers (seconds, a minute on a busy machine)
        from tide_megatron.demo.pipeline import run

        run(s, args.output_dir, args.threads)
    except (DemoError, ValueError, FileNotFoundError, FileExistsError) as err:
        print(f"tide-demo: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tide-demo: interrupted; no output was written", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""tide-train: TIDE distillation end to end.

  tide-train --config FILE [SECTION.FIELD=VALUE ...]
  torchrun --nproc_per_node=N -m tide_megatron.cli.train --config FILE ...   (or srun under SLURM)

The config is validated (files, layouts against the world size, mode against the tokenizers and the
dataset) before any model is built. SIGTERM or SIGUSR1 (to the ranks or to the whole process group)
writes a checkpoint and exits 0 (one that arrives while the models load is kept for the first step), so a
requeued job with checkpoint.resume=auto continues where it stopped. One run per output directory (a lock;
a second run fails at start). When the run stops (finished, signalled or failed) rank 0 writes
<output_dir>/results.json for tide-report (tide_megatron/report/run_dir.py). Any error: one line on stderr
and a non-zero exit (the traceback with --debug or TIDE_DEBUG=1).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from typing import Optional, Sequence

from tide_megatron.cli.errors import cli_errors
from tide_megatron.report.run_dir import run_recorded


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tide-train", description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--config", required=True, help="YAML config (see examples/)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. optim.lr=1e-4 objective.compdemo=true")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    return p


@cli_errors("tide-train")
def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    from tide_megatron.training.machine_check import check_machine  # local: torch, not for --help

    check_machine()  # before megatron-core is imported: a broken TE install breaks that import
    from tide_megatron.config import ConfigError, dump_config, load_config  # local: megatron, after check_machine
    from tide_megatron.training.preflight import preflight  # local: megatron, after check_machine

    cfg = load_config(args.config, list(args.overrides))
    if args.print_config:
        print(dump_config(cfg), end="")
        return 0
    cfg.check_world_size(int(os.environ.get("WORLD_SIZE", "1")))
    preflight(cfg)  # GPUs, Transformer Engine, FP8, layouts, MoE kernels: before any model is built
    if not cfg.data.train:
        raise ConfigError("data.train: expected the directory of a tide-preprocess dataset")
    from tide_megatron.data.indexed import TideAlignedDataset  # local: megatron, after check_machine
    from tide_megatron.distributed.lifetime import job_signals_held  # local: megatron, after check_machine
    from tide_megatron.training.teacher_server import build_trainer  # local: megatron, after check_machine

    train = TideAlignedDataset(cfg.data.train)
    valid = TideAlignedDataset(cfg.data.valid) if cfg.data.valid else None
    # a signal while the models are built or a checkpoint loads is kept for the loop's first step boundary
    with job_signals_held() if cfg.checkpoint.save_on_signal else contextlib.nullcontext():
        trainer = build_trainer(cfg, train, valid_data=valid)  # a TeacherServer on a separate teacher pool's ranks
        try:
            summary = run_recorded(trainer)  # trainer.run(), then <output_dir>/results.json however it ended
        finally:
            trainer.close()
    if summary.get("preempted"):
        print(f"tide-train: stopped by a signal at step {trainer.state.step}; checkpoint written, exiting 0",
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

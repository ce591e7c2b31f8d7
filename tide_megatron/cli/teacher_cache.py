"""tide-teacher-cache: precompute the teacher payloads of N epochs for teacher.placement=offline.

  torchrun --nproc_per_node=N -m tide_megatron.cli.teacher_cache --config FILE [--epochs E] [SECTION.FIELD=VALUE ...]

The config is the training run's own (teacher, data, objective, optim.seed, student.seq_length/block_size): the
payloads depend on exactly those, and the cache records them so that a run with other settings refuses it. The
teacher runs with teacher.tp/pp/ep over the ranks of this job. The cache is written to teacher.cache (default:
<data.train>.teacher-cache) and appears there only when complete. Chunk modes only (one fp32 per teacher token).
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from tide_megatron.cli.errors import cli_errors


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tide-teacher-cache", description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--config", required=True, help="the training run's YAML config")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. teacher.cache=/data/a.teacher-cache")
    p.add_argument("--epochs", type=int, default=None,
                   help="epochs to precompute (default: ceil(optim.epochs), what a run counting epochs reads)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing cache at the path")
    return p


@cli_errors("tide-teacher-cache")
def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    from tide_megatron.training.machine_check import check_machine

    check_machine()  # before megatron-core is imported: a broken TE install breaks that import
    from tide_megatron.config import ConfigError, load_config
    from tide_megatron.data.indexed import TideAlignedDataset
    from tide_megatron.training.teacher_cache import precompute_teacher_cache

    cfg = load_config(args.config, list(args.overrides))
    if not cfg.data.train:
        raise ConfigError("data.train: expected the directory of a tide-preprocess dataset")
    train = TideAlignedDataset(cfg.data.train)
    valid = TideAlignedDataset(cfg.data.valid) if cfg.data.valid else None
    path = precompute_teacher_cache(cfg, train, valid, epochs=args.epochs, overwrite=args.overwrite)
    print(f"tide-teacher-cache: wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

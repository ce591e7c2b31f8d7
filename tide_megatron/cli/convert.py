"""tide-convert: HF <-> megatron-core dist checkpoints, and a logits parity check.

  tide-convert hf-to-mcore --hf-dir D --mcore-dir M [--arch qwen3|llada2 --tp N --pp N --ep N --dtype bfloat16]
  tide-convert mcore-to-hf --mcore-dir M --hf-dir D [--dtype bfloat16]
  tide-convert verify      --hf-dir D --mcore-dir M [--seq-length 16 --block-size 4]
  tide-convert export      --checkpoint RUN/checkpoints [--hf-dir D --dtype bfloat16]   (a trained student)

Run under torchrun for TP/PP/EP > 1 (world = tp*pp*dp); a plain process is a world of one.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from tide_megatron.cli.errors import cli_errors
from tide_megatron.models.registry import ARCHITECTURES

# The LLaDA2 teacher has its own converter module (one-way: the teacher is never trained).
CLI_ARCHITECTURES = sorted(set(ARCHITECTURES) | {"llada2"})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tide-convert", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    to_mcore = sub.add_parser("hf-to-mcore", help="HF safetensors directory -> megatron dist checkpoint")
    to_mcore.add_argument("--hf-dir", required=True)
    to_mcore.add_argument("--mcore-dir", required=True, help="output directory (must not exist)")
    to_mcore.add_argument("--tp", type=int, default=1)
    to_mcore.add_argument("--pp", type=int, default=1)
    to_mcore.add_argument("--ep", type=int, default=1, help="expert parallelism (MoE architectures)")
    to_mcore.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    to_hf = sub.add_parser("mcore-to-hf", help="megatron dist checkpoint -> HF safetensors directory")
    to_hf.add_argument("--mcore-dir", required=True)
    to_hf.add_argument("--hf-dir", required=True, help="output directory (must not exist)")
    to_hf.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"])
    to_hf.add_argument("--max-shard-mb", type=int, default=2048)
    verify = sub.add_parser("verify", help="max |logit difference| between transformers and megatron")
    verify.add_argument("--hf-dir", required=True)
    verify.add_argument("--mcore-dir", required=True)
    verify.add_argument("--seq-length", type=int, default=16)
    verify.add_argument("--block-size", type=int, default=4)
    verify.add_argument("--batch-size", type=int, default=2)
    verify.add_argument("--seed", type=int, default=0)
    for p in (to_mcore, to_hf, verify):
        p.add_argument("--arch", default=None, choices=CLI_ARCHITECTURES,
                       help="model family (default: qwen3; later commands read it from the checkpoint)")
    export = sub.add_parser("export", help="trainer checkpoint (student) -> HF Qwen3 directory (training/export.py)")
    export.add_argument("--checkpoint", required=True, help="a step_XXXXXXX directory or the checkpoint root")
    export.add_argument("--hf-dir", default=None, help="output directory (must not exist; default STEP_DIR/hf)")
    export.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"])
    export.add_argument("--max-shard-mb", type=int, default=2048)
    return parser


def run(argv: Optional[Sequence[str]] = None) -> Optional[dict]:
    """Parse and execute (raises on bad input); returns verify's differences."""
    args = build_parser().parse_args(argv)
    from tide_megatron.distributed import init_distributed

    init_distributed()
    if args.command == "export":
        from tide_megatron.training.checkpoint import CheckpointError
        from tide_megatron.training.export import export_student

        try:
            out = export_student(args.checkpoint, args.hf_dir, dtype=args.dtype,
                                 max_shard_bytes=args.max_shard_mb * 1024**2)
        except CheckpointError as err:
            raise ValueError(str(err)) from None
        _rank0_print(f"exported {args.checkpoint} -> {out}")
        return None
    if args.arch == "llada2":
        return _run_llada2(args)
    from tide_megatron.models import converter
    from tide_megatron.models.registry import get_architecture

    if args.command == "hf-to-mcore":
        converter.hf_to_mcore(get_architecture(args.arch or "qwen3"), args.hf_dir, args.mcore_dir, tp=args.tp,
                              pp=args.pp, ep=args.ep, dtype=args.dtype)
        return None
    arch = get_architecture(args.arch or converter.read_mcore_meta(args.mcore_dir).get("architecture", "qwen3"))
    if args.command == "mcore-to-hf":
        converter.mcore_to_hf(arch, args.mcore_dir, args.hf_dir, dtype=args.dtype,
                              max_shard_bytes=args.max_shard_mb * 1024**2)
        return None
    from tide_megatron.diffusion.masks import check_block_multiple

    check_block_multiple(args.seq_length, args.block_size)
    return converter.verify(arch, args.hf_dir, args.mcore_dir, seq_len=args.seq_length, batch=args.batch_size,
                            block_size=args.block_size, seed=args.seed, log=_rank0_print)


def _run_llada2(args) -> Optional[dict]:
    """LLaDA2-MoE teacher: HF -> mcore (TP x PP x EP) and verify against the checkpoint's own modeling code."""
    from tide_megatron.models.llada2 import convert

    if args.command == "hf-to-mcore":
        convert.hf_to_mcore(args.hf_dir, args.mcore_dir, tp=args.tp, pp=args.pp, ep=args.ep, dtype=args.dtype)
        return None
    if args.command == "verify":
        return convert.verify(args.hf_dir, args.mcore_dir, seq_len=args.seq_length, batch=args.batch_size,
                              seed=args.seed, log=_rank0_print)
    raise ValueError("--arch llada2: mcore-to-hf is not supported (the teacher is never trained)")


def _rank0_print(msg: str) -> None:
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_rank() == 0:
        print(msg, flush=True)


@cli_errors("tide-convert")
def main(argv: Optional[Sequence[str]] = None) -> int:
    """Console entry point: bad input -> one line on stderr and exit status 2."""
    try:
        run(argv)
    except (ValueError, FileNotFoundError, FileExistsError, KeyError) as err:
        print(f"tide-convert: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

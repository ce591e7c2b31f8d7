"""tide-convert: HF <-> megatron-core dist checkpoints for every registered model family, and a logits check.

  tide-convert hf-to-mcore --hf-dir D --mcore-dir M [--arch qwen3|wedlm|llada2 --tp N --pp N --ep N --dtype float32]
  tide-convert mcore-to-hf --mcore-dir M --hf-dir D [--dtype bfloat16 --max-shard-mb 2048]
  tide-convert verify      --hf-dir D --mcore-dir M [--tolerance 1e-4 --trust-remote-code --seq-length 16 ...]
  tide-convert export      --checkpoint RUN/checkpoints [--hf-dir D --dtype bfloat16]   (a trained student)

`mcore-to-hf` and `verify` read the family from the converted directory. `verify` exits 1 when a logit
differs by more than --tolerance; it runs a checkpoint's own modeling code (LLaDA2) only with
--trust-remote-code. Run under torchrun for TP/PP/EP > 1 (world = tp*pp*dp); a plain process is a world of one.
Exit status: 0 done, 1 verify found a difference, 2 bad input.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

import torch.distributed as dist

from tide_megatron.cli.errors import cli_errors
from tide_megatron.diffusion.masks import check_block_multiple
from tide_megatron.distributed import init_distributed
from tide_megatron.models.convert.mcore_dir import DTYPES, hf_to_mcore, mcore_to_hf, read_mcore_meta
from tide_megatron.models.convert.verify import DEFAULT_TOLERANCE, VerifyFailed, verify
from tide_megatron.models.registry import ARCHITECTURES, get_architecture
from tide_megatron.training.checkpoint import CheckpointError
from tide_megatron.training.export import export_student


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tide-convert", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    to_mcore = sub.add_parser("hf-to-mcore", help="HF safetensors directory -> megatron dist checkpoint")
    to_mcore.add_argument("--hf-dir", required=True)
    to_mcore.add_argument("--mcore-dir", required=True, help="output directory (must not exist)")
    to_mcore.add_argument("--arch", default="qwen3", choices=sorted(ARCHITECTURES), help="model family")
    to_mcore.add_argument("--tp", type=int, default=1)
    to_mcore.add_argument("--pp", type=int, default=1)
    to_mcore.add_argument("--ep", type=int, default=1, help="expert parallelism (MoE families)")
    to_mcore.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    to_hf = sub.add_parser("mcore-to-hf", help="megatron dist checkpoint -> HF safetensors directory")
    to_hf.add_argument("--mcore-dir", required=True)
    to_hf.add_argument("--hf-dir", required=True, help="output directory (must not exist)")
    to_hf.add_argument("--dtype", default=None, choices=sorted(DTYPES))
    to_hf.add_argument("--max-shard-mb", type=int, default=2048)
    check = sub.add_parser("verify", help="max |logit difference| between transformers and megatron; "
                                          "exit 1 above --tolerance")
    check.add_argument("--hf-dir", required=True)
    check.add_argument("--mcore-dir", required=True)
    check.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                       help="largest allowed max |logit difference| (fp32 arithmetic on both sides, HF weights "
                            "rounded to the checkpoint's dtype, so the default holds for bf16 checkpoints too)")
    check.add_argument("--trust-remote-code", action="store_true",
                       help="allow running the modeling code the HF checkpoint ships (config.json auto_map; LLaDA2)")
    check.add_argument("--tp", type=int, default=None, help="tensor parallelism of the megatron side "
                                                            "(default: the world size)")
    check.add_argument("--seq-length", type=int, default=16)
    check.add_argument("--block-size", type=int, default=4)
    check.add_argument("--batch-size", type=int, default=2)
    check.add_argument("--seed", type=int, default=0)
    export = sub.add_parser("export", help="trainer checkpoint (student) -> HF Qwen3 directory (training/export.py)")
    export.add_argument("--checkpoint", required=True, help="a step_XXXXXXX directory or the checkpoint root")
    export.add_argument("--hf-dir", default=None, help="output directory (must not exist; default STEP_DIR/hf)")
    export.add_argument("--dtype", default=None, choices=sorted(DTYPES))
    export.add_argument("--max-shard-mb", type=int, default=2048)
    return parser


def run(argv: Optional[Sequence[str]] = None) -> Optional[dict]:
    """Parse and execute (raises on bad input, `VerifyFailed` on a mismatch); returns verify's differences."""
    args = build_parser().parse_args(argv)
    init_distributed()
    if args.command == "export":
        try:
            out = export_student(args.checkpoint, args.hf_dir, dtype=args.dtype,
                                 max_shard_bytes=args.max_shard_mb * 1024**2)
        except CheckpointError as err:
            raise ValueError(str(err)) from None
        _rank0_print(f"exported {args.checkpoint} -> {out}")
        return None
    if args.command == "hf-to-mcore":
        hf_to_mcore(get_architecture(args.arch), args.hf_dir, args.mcore_dir, tp=args.tp, pp=args.pp, ep=args.ep,
                    dtype=args.dtype)
        return None
    arch = get_architecture(read_mcore_meta(args.mcore_dir).get("architecture", "qwen3"))
    if args.command == "mcore-to-hf":
        mcore_to_hf(arch, args.mcore_dir, args.hf_dir, dtype=args.dtype, max_shard_bytes=args.max_shard_mb * 1024**2)
        return None
    check_block_multiple(args.seq_length, args.block_size)
    return verify(arch, args.hf_dir, args.mcore_dir, seq_len=args.seq_length, batch=args.batch_size,
                  block_size=args.block_size, seed=args.seed, tp=args.tp, tolerance=args.tolerance,
                  trust_remote_code=args.trust_remote_code, log=_rank0_print)


def _rank0_print(msg: str) -> None:
    if not dist.is_initialized() or dist.get_rank() == 0:
        print(msg, flush=True)


@cli_errors("tide-convert")
def main(argv: Optional[Sequence[str]] = None) -> int:
    """Console entry point: a verify mismatch -> exit 1; bad input -> one line on stderr and exit 2."""
    try:
        run(argv)
    except VerifyFailed as err:
        print(f"tide-convert: verify failed: {err}", file=sys.stderr)
        return 1
    except (ValueError, FileNotFoundError, FileExistsError, KeyError) as err:
        print(f"tide-convert: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

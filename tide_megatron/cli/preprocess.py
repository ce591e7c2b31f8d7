"""`tide-preprocess`: conversations -> TIDE indexed dataset; `tide-preprocess inspect DIR -i N` shows a sample."""

from __future__ import annotations

import argparse
import json
import sys

from tide_megatron.cli.errors import cli_errors
from tide_megatron.data.samples import SampleConfig


def _build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tide-preprocess", description=__doc__)
    p.add_argument("inputs", nargs="+", help="JSONL files (messages with role/content, or text) or plain-text files")
    p.add_argument("-o", "--output", required=True, help="output dataset directory (written atomically)")
    p.add_argument("--student-tokenizer", required=True, help="name (qwen2, mistral-v1, ...), .gguf, .model or HF dir")
    p.add_argument("--teacher-tokenizer", required=True)
    p.add_argument("--student-template", default="auto", help="auto | own | qwen3 | llada2 | wedlm | FILE.jinja")
    p.add_argument("--teacher-template", default="auto", help="auto | own | qwen3 | llada2 | wedlm | FILE.jinja")
    p.add_argument("--student-max-len", type=int, default=512)
    p.add_argument("--teacher-max-len", type=int, default=1024, help="1024 for chunks (A), 768 for pairs (B)")
    p.add_argument("--align", choices=("chunks", "pairs"), default="chunks")
    p.add_argument("--student-eos-token", default=None, help="e.g. <|im_end|> for Qwen3")
    p.add_argument("--teacher-eos-token", default=None)
    p.add_argument("--text-prompt", default=SampleConfig.text_prompt, help="user prompt for plain-text inputs")
    p.add_argument("--check-pair-ids", action="store_true",
                   help="pairs mode: skip samples whose paired student/teacher ids differ (§9.16)")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    return p


def _inspect(argv: list[str]) -> int:
    from tide_megatron.data.indexed import TideAlignedDataset
    from tide_megatron.data.inspect import render_sample

    p = argparse.ArgumentParser(prog="tide-preprocess inspect")
    p.add_argument("dataset")
    p.add_argument("-i", "--index", type=int, default=0)
    p.add_argument("--max-rows", type=int, default=200)
    args = p.parse_args(argv)
    ds = TideAlignedDataset(args.dataset)
    if not 0 <= args.index < len(ds):
        raise ValueError(f"--index {args.index}: {args.dataset} has {len(ds)} samples (0 .. {len(ds) - 1})")
    print(render_sample(ds, args.index, max_rows=args.max_rows))
    return 0


@cli_errors("tide-preprocess")
def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["inspect"]:
        return _inspect(argv[1:])
    from tide_megatron.data.preprocess import preprocess

    args = _build_parser().parse_args(argv)
    config = SampleConfig(
        student_tokenizer=args.student_tokenizer, teacher_tokenizer=args.teacher_tokenizer,
        student_template=args.student_template, teacher_template=args.teacher_template,
        student_max_len=args.student_max_len, teacher_max_len=args.teacher_max_len, align=args.align,
        student_eos_token=args.student_eos_token, teacher_eos_token=args.teacher_eos_token,
        text_prompt=args.text_prompt, check_pair_ids=args.check_pair_ids,
    )
    summary = preprocess(args.inputs, args.output, config, workers=args.workers, overwrite=args.overwrite,
                         progress=not args.no_progress)
    print(summary.render())
    print(json.dumps({"output": args.output, **summary.as_dict()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

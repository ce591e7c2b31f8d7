"""``tide-eval``: evaluate a BD3LM student (bits per byte, generation throughput, HumanEval pass@1).

Examples::

    tide-eval --hf-dir runs/student_hf --heldout held_out/ --tasks bpb,throughput --output eval.json
    tide-eval --hf-dir runs/student_hf --tasks humaneval --chat-template --max-new-tokens 256
    tide-eval --mcore-dir runs/student_mcore --heldout held_out/ --tasks bpb

An HF directory runs through transformers with its prefix KV cache; a megatron-core directory
(written by tide-convert) runs the megatron student itself with megatron-core's static KV cache
(local/SDPA backend; with Transformer Engine attention, or --kv-cache-slots 0, the prefix is
re-encoded at every step instead).

The sampler settings default to the paper's evaluation (§7.2): block 32, steps = max_new_tokens,
greedy. Results go to one JSON file (``--output``) and a printed table.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any, Optional, Sequence

TASKS = ("bpb", "throughput", "humaneval")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tide-eval", description=__doc__.split("\n\n")[0])
    src = p.add_argument_group("model")
    which = src.add_mutually_exclusive_group()
    which.add_argument("--hf-dir", help="HF checkpoint directory (config.json + safetensors)")
    which.add_argument("--mcore-dir", help="megatron-core student directory written by tide-convert hf-to-mcore")
    src.add_argument("--tokenizer", help="tokenizer directory (default: --hf-dir, or MCORE_DIR/hf)")
    src.add_argument("--dtype", choices=("auto", "float32", "bfloat16"), default="auto",
                     help="auto = bfloat16 on GPU, float32 on CPU")
    src.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    src.add_argument("--kv-cache-slots", type=int, default=4096,
                     help="--mcore-dir: megatron-core static KV cache length (prompt + new tokens); 0 = "
                          "re-encode the prefix every step instead")
    src.add_argument("--mask-id", type=int, help="default: the tokenizer's mask token")
    src.add_argument("--eos-id", type=int, help="default: the tokenizer's eos token")
    src.add_argument("--pad-id", type=int, help="default: the tokenizer's pad token (else eos)")
    p.add_argument("--tasks", default="bpb,throughput", help=f"comma list of {', '.join(TASKS)}")
    p.add_argument("--output", help="write results JSON here (atomically)")
    p.add_argument("--seed", type=int, default=42)
    gen = p.add_argument_group("sampler (spec §7.3)")
    gen.add_argument("--block-size", type=int, default=32)
    gen.add_argument("--max-new-tokens", type=int, default=256)
    gen.add_argument("--steps", type=int, help="denoising steps in all (default: --max-new-tokens)")
    gen.add_argument("--temperature", type=float, default=0.0)
    gen.add_argument("--batch-size", type=int, default=1)
    nll = p.add_argument_group("bits per byte")
    nll.add_argument("--heldout", nargs="+", default=[], help="held-out text files or directories")
    nll.add_argument("--heldout-max-bytes", type=int, default=200_000)
    nll.add_argument("--seq-len", type=int, default=512)
    nll.add_argument("--draws", type=int, default=4, help="Monte Carlo t draws per window")
    he = p.add_argument_group("HumanEval")
    he.add_argument("--humaneval-limit", type=int, help="first N problems only")
    he.add_argument("--chat-template", action="store_true",
                    help="humaneval_instruct prompts in the tokenizer's chat template (§7.2)")
    he.add_argument("--workers", type=int, help="parallel sandboxed test processes (default: CPU count)")
    he.add_argument("--exec-timeout", type=float, default=10.0)
    tp = p.add_argument_group("throughput")
    tp.add_argument("--throughput-prompts", type=int, default=8, help="HumanEval prompts to time")
    return p


def _parse_tasks(text: str) -> list[str]:
    tasks = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in tasks if t not in TASKS]
    if bad or not tasks:
        raise SystemExit(f"tide-eval: --tasks: unknown {bad or text!r}; expected a comma list of {', '.join(TASKS)}")
    return tasks


def load_hf_model(hf_dir: str, dtype: str, device: str):
    """transformers' own model class for a checkpoint directory, in eval mode.

    Loaded through ``load_hf_reference`` (from_config + safetensors) rather than ``from_pretrained``,
    which in transformers 5 leaves the model wrong once torch.distributed is initialised.
    """
    import torch

    from tide_megatron.dtypes import DTYPES
    from tide_megatron.models.convert.reference import load_hf_reference

    if not os.path.isfile(os.path.join(hf_dir, "config.json")):
        raise SystemExit(f"tide-eval: --hf-dir {hf_dir}: no config.json there")
    torch_dtype = DTYPES.get(dtype, torch.bfloat16 if device.startswith("cuda") else torch.float32)
    return load_hf_reference(hf_dir).to(device=device, dtype=torch_dtype).eval()


def _special_ids(args, tokenizer) -> tuple[int, int, int]:
    mask = args.mask_id if args.mask_id is not None else getattr(tokenizer, "mask_token_id", None)
    eos = args.eos_id if args.eos_id is not None else getattr(tokenizer, "eos_token_id", None)
    if mask is None:
        raise SystemExit("tide-eval: the tokenizer has no mask token; pass --mask-id")
    if eos is None:
        raise SystemExit("tide-eval: the tokenizer has no eos token; pass --eos-id")
    pad = args.pad_id if args.pad_id is not None else (getattr(tokenizer, "pad_token_id", None) or eos)
    return int(mask), int(eos), int(pad)


def _chat(tokenizer):
    """User message -> chat-formatted prompt with a generation prompt and an empty think block (§7.2)."""
    def render(user: str) -> str:
        text = tokenizer.apply_chat_template([{"role": "user", "content": user}], tokenize=False,
                                             add_generation_prompt=True, enable_thinking=False)
        if "<think>" in tokenizer.get_vocab() and "</think>" not in text:
            text += "<think>\n\n</think>\n\n"
        return text
    return render


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Evaluate and return the results dictionary (also written to ``--output``)."""
    import torch
    from transformers import AutoTokenizer

    from tide_megatron.diffusion.sampler import SamplerConfig
    from tide_megatron.eval.generation import SamplerCompletionModel, measure_generation, peak_memory
    from tide_megatron.eval.humaneval import load_problems, run_humaneval
    from tide_megatron.eval.models import HFDenoiser, count_parameters, load_mcore_student
    from tide_megatron.eval.nll import bits_per_byte, read_heldout_text, split_windows, tokenize_with_bytes

    tasks = _parse_tasks(args.tasks)
    if not (args.hf_dir or args.mcore_dir):
        raise SystemExit("tide-eval: give the student with --hf-dir DIR or --mcore-dir DIR")
    if "bpb" in tasks and not args.heldout:
        raise SystemExit("tide-eval: --tasks bpb needs --heldout FILE_OR_DIR ...")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(args.seed)
    if args.hf_dir:
        model = load_hf_model(args.hf_dir, args.dtype, device)
        hf_model = HFDenoiser(model)
        denoiser, full_forward = hf_model, hf_model.full_forward
        tokenizer_dir = args.tokenizer or args.hf_dir
    else:
        if not os.path.isdir(args.mcore_dir):
            raise SystemExit(f"tide-eval: --mcore-dir {args.mcore_dir}: no such directory")
        student = load_mcore_student(args.mcore_dir, None if args.dtype == "auto" else args.dtype)
        model, full_forward = student.model, student.full_forward
        denoiser = student.denoiser(args.kv_cache_slots or None)
        tokenizer_dir = args.tokenizer or os.path.join(args.mcore_dir, "hf")
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    mask_id, eos_id, pad_id = _special_ids(args, tokenizer)
    cfg = SamplerConfig(mask_id=mask_id, pad_id=pad_id, eos_id=eos_id, block_size=args.block_size,
                        max_new_tokens=args.max_new_tokens, steps=args.steps or args.max_new_tokens,
                        temperature=args.temperature)
    results: dict[str, Any] = {"model": args.hf_dir or args.mcore_dir,
                               "backend": "transformers" if args.hf_dir else "megatron-core",
                               "kv_cache": type(denoiser).__name__, "parameters": count_parameters(model),
                               "device": device,
                               "sampler": {"block_size": cfg.block_size, "max_new_tokens": cfg.max_new_tokens,
                                           "steps": cfg.steps, "temperature": cfg.temperature,
                                           "batch_size": args.batch_size},
                               "tasks": {}}
    if "bpb" in tasks:
        start = time.perf_counter()
        windows = [w for doc in read_heldout_text(args.heldout, args.heldout_max_bytes)
                   for w in split_windows(tokenize_with_bytes(tokenizer, doc), args.seq_len)]
        rep = bits_per_byte(full_forward, windows, mask_id, args.block_size, draws=args.draws,
                            batch_size=max(1, args.batch_size), seed=args.seed)
        results["tasks"]["bpb"] = {**vars(rep), "bytes_per_token": rep.bytes_per_token,
                                   "seconds": time.perf_counter() - start}
    if "throughput" in tasks:
        prompts = [tokenizer(p["prompt"], add_special_tokens=False)["input_ids"]
                   for p in load_problems(limit=args.throughput_prompts)]
        results["tasks"]["throughput"] = measure_generation(denoiser, prompts, cfg, args.batch_size).as_dict()
    if "humaneval" in tasks:
        start = time.perf_counter()
        completer = SamplerCompletionModel(denoiser, tokenizer, cfg, torch.Generator().manual_seed(args.seed))
        rep = run_humaneval(completer, load_problems(limit=args.humaneval_limit), instruct=args.chat_template,
                            chat=_chat(tokenizer) if args.chat_template else None, batch_size=args.batch_size,
                            workers=args.workers, timeout_s=args.exec_timeout)
        results["tasks"]["humaneval"] = {**rep.summary(), "generation_tokens_per_s":
                                         completer.decoded_tokens / max(completer.seconds, 1e-9),
                                         "seconds": time.perf_counter() - start}
        results["humaneval_results"] = [vars(r) for r in rep.results]
    mem, kind = peak_memory()
    results["peak_memory_bytes"], results["peak_memory_kind"] = mem, kind
    return results


def main(argv: Optional[Sequence[str]] = None) -> int:
    from tide_megatron.eval.report import format_table, write_json_atomic

    args = build_parser().parse_args(argv)
    try:
        results = run(args)
    except (ValueError, FileNotFoundError) as err:  # bad input: one line naming it, no traceback
        print(f"tide-eval: error: {err}", file=sys.stderr)
        return 2
    print(format_table(results))
    if args.output:
        write_json_atomic(args.output, results)
        print(f"results written to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

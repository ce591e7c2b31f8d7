"""``tide-eval``: evaluate a BD3LM student (bits per byte, throughput, HumanEval, the paper's benchmarks).

Examples::

    tide-eval --hf-dir runs/student_hf --heldout held_out/ --tasks bpb,throughput --output eval.json
    tide-eval --hf-dir runs/student_hf --tasks humaneval --chat-template --max-new-tokens 256
    tide-eval --mcore-dir runs/student_mcore --heldout held_out/ --tasks bpb
    tide-eval --hf-dir runs/student_hf --tasks lm_eval:gsm8k_cot,hellaswag_gen --chat-template --limit 50
    tide-eval --hf-dir runs/student_hf --suite paper --confirm-run-unsafe-code --data-dir datasets/ \
        --paper-variant "TIDE-Cross (A)" --output runs/eval/paper.json

An HF directory runs through transformers with its prefix KV cache; a megatron-core directory
(written by tide-convert) runs the megatron student itself with megatron-core's static KV cache
(local/SDPA backend; with Transformer Engine attention, or --kv-cache-slots 0, the prefix is
re-encoded at every step instead).

``lm_eval:`` tasks and ``--suite paper`` run through lm-evaluation-harness with the ``tide_bd3lm``
model class (the ``eval`` extra; docs/EVALUATION.md): every task name after ``lm_eval:`` in the
comma list is a harness task, group or tag. Under torchrun the harness tasks run data parallel.

The sampler settings default to the paper's evaluation (§7.2): block 32, steps = max_new_tokens,
greedy. Results go to one JSON file (``--output``; the suite's table also to its ``.md`` twin)
and a printed table.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence

from tide_megatron.cli.errors import cli_errors

TASKS = ("bpb", "throughput", "humaneval")
HARNESS_PREFIX = "lm_eval:"
DEFAULT_TASKS = "bpb,throughput"
DEFAULT_MAX_NEW_TOKENS = 256


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
    p.add_argument("--tasks", default=None,
                   help=f"comma list of {', '.join(TASKS)}, then lm_eval:TASK[,TASK...] for harness tasks "
                        f"(default: {DEFAULT_TASKS}, or none with --suite)")
    p.add_argument("--output", help="write results JSON here (atomically)")
    p.add_argument("--seed", type=int, default=42)
    gen = p.add_argument_group("sampler (spec §7.3)")
    gen.add_argument("--block-size", type=int, default=32)
    gen.add_argument("--max-new-tokens", type=int,
                     help=f"new tokens (default {DEFAULT_MAX_NEW_TOKENS}; harness tasks: each task's own, "
                          f"the paper's settings with --suite; given, it applies to every task)")
    gen.add_argument("--steps", type=int, help="denoising steps in all (default: the number of new tokens)")
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
    lm = p.add_argument_group("lm-evaluation-harness (lm_eval: tasks and --suite; docs/EVALUATION.md)")
    lm.add_argument("--suite", choices=("paper",), help="the paper's eight benchmarks with its settings (§7.2)")
    lm.add_argument("--suite-tasks", help="comma list: only these benchmarks of the suite (task or column names)")
    lm.add_argument("--paper-variant", help="the paper variant whose published figures go beside ours "
                                            "(default: all of them)")
    lm.add_argument("--data-dir", help="local dataset copies instead of hub downloads (layout: docs/EVALUATION.md)")
    lm.add_argument("--list-data-files", action="store_true",
                    help="print the local files the chosen tasks need under --data-dir, and exit")
    lm.add_argument("--include-path", help="a directory (or file) of extra harness task YAMLs")
    lm.add_argument("--limit", type=float, help="documents per task (a fraction when < 1); for quick checks")
    lm.add_argument("--num-fewshot", type=int, help="few-shot examples for the lm_eval: tasks")
    lm.add_argument("--log-samples", action="store_true", help="write every document's prompt and output")
    lm.add_argument("--confirm-run-unsafe-code", action="store_true",
                    help="allow the code tasks (humaneval*, mbpp*) to execute model-written programs")
    return p


def _parse_tasks(text: Optional[str], suite: bool = False) -> tuple[list[str], list[str]]:
    """(our tasks, harness tasks): items from the first ``lm_eval:`` on are harness task names."""
    if text is None:
        text = "" if suite else DEFAULT_TASKS
    ours, harness = [], []
    for item in (t.strip() for t in text.split(",")):
        if item.startswith(HARNESS_PREFIX):
            item = item[len(HARNESS_PREFIX):].strip()
            harness.append(item)
        elif harness:
            harness.append(item)
        elif item:
            ours.append(item)
    bad = [t for t in ours if t not in TASKS] + (["lm_eval: (no task name)"] if "" in harness else [])
    if bad or not (ours or harness or suite):
        raise SystemExit(f"tide-eval: --tasks: unknown {bad or text!r}; expected a comma list of "
                         f"{', '.join(TASKS)}, then {HARNESS_PREFIX}TASK[,TASK...]")
    return ours, harness


def _check_positive(args: argparse.Namespace) -> None:
    """Sampler and harness flags that must be positive: one error naming the flag."""
    for flag, value in (("--max-new-tokens", args.max_new_tokens), ("--steps", args.steps),
                        ("--block-size", args.block_size), ("--draws", args.draws), ("--batch-size", args.batch_size),
                        ("--limit", args.limit)):
        if value is not None and value <= 0:
            raise SystemExit(f"tide-eval: {flag} must be positive, got {value}")


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
    from tide_megatron.eval.prompts import render_chat

    return lambda user: render_chat(tokenizer, [{"role": "user", "content": user}])


def _protocol_note(args: argparse.Namespace) -> str:
    """What of this run differs from the paper's protocol (§7.2), for the table's footnote."""
    diffs = [f"{flag} {value}" for flag, value, paper in (
        ("--max-new-tokens", args.max_new_tokens, None), ("--steps", args.steps, None),
        ("--block-size", args.block_size, 32), ("--temperature", args.temperature, 0.0), ("--limit", args.limit, None))
        if value is not None and value != paper]
    return f"Not the paper's protocol: {', '.join(diffs)}." if diffs else ""


def _load(args: argparse.Namespace, device: str, harness: bool):
    """(denoiser, full_forward, torch module, tokenizer, (mask, eos, pad), harness LM or None, closers)."""
    from transformers import AutoTokenizer

    from tide_megatron.eval.models import HFDenoiser, load_mcore_student

    if harness:
        from tide_megatron.eval.harness.model import TideBD3LM

        lm = TideBD3LM(pretrained=args.hf_dir or args.mcore_dir, tokenizer=args.tokenizer, dtype=args.dtype,
                       device=device, batch_size=args.batch_size, block_size=args.block_size,
                       max_new_tokens=args.max_new_tokens, steps=args.steps, temperature=args.temperature,
                       mc_draws=args.draws, seed=args.seed, mask_id=args.mask_id, eos_id=args.eos_id,
                       pad_id=args.pad_id, kv_cache_slots=args.kv_cache_slots)
        return (lm.denoiser, lm.full_forward, lm.module, lm.tokenizer, (lm.mask_id, lm.eos_id, lm.pad_id), lm,
                [lm.close])
    closers = []
    if args.hf_dir:
        model = load_hf_model(args.hf_dir, args.dtype, device)
        hf_model = HFDenoiser(model)
        denoiser, full_forward = hf_model, hf_model.full_forward
        tokenizer_dir = args.tokenizer or args.hf_dir
    else:
        if not os.path.isdir(args.mcore_dir):
            raise SystemExit(f"tide-eval: --mcore-dir {args.mcore_dir}: no such directory")
        student = load_mcore_student(args.mcore_dir, None if args.dtype == "auto" else args.dtype)
        closers.append(student.close)
        model, full_forward = student.model, student.full_forward
        denoiser = student.denoiser(args.kv_cache_slots or None)
        tokenizer_dir = args.tokenizer or os.path.join(args.mcore_dir, "hf")
    if not any(os.path.isfile(os.path.join(tokenizer_dir, f))
               for f in ("tokenizer.json", "tokenizer.model", "vocab.json")):
        raise FileNotFoundError(f"{tokenizer_dir}: no tokenizer there (tokenizer.json, tokenizer.model or "
                                f"vocab.json); pass --tokenizer DIR")  # transformers would build an empty one
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    return denoiser, full_forward, model, tokenizer, _special_ids(args, tokenizer), None, closers


def _list_data_files(args: argparse.Namespace, harness_tasks: list[str]) -> dict[str, Any]:
    from tide_megatron.eval.harness import suite as paper_suite
    from tide_megatron.eval.harness.offline import needed_files

    paper = paper_suite.load_paper_results()
    benches = paper_suite.selected(paper, _csv(args.suite_tasks)) if args.suite else []
    shots = {b.task: b.num_fewshot for b in benches} | {t: args.num_fewshot for t in harness_tasks}
    rows = needed_files(shots, args.data_dir, args.include_path)
    for row in rows:
        print(f"{row['task']}: {row['file']}  [{row['status']}]  fields: {', '.join(row['fields']) or '-'}")
    return {"data_files": rows}


def _csv(text: Optional[str]) -> list[str]:
    return [t.strip() for t in (text or "").split(",") if t.strip()]


def run(args: argparse.Namespace) -> Optional[dict[str, Any]]:
    """Evaluate and return the results dictionary (also written to ``--output``); None on ranks > 0."""
    import torch

    from tide_megatron.diffusion.sampler import SamplerConfig
    from tide_megatron.eval.generation import SamplerCompletionModel, measure_generation, peak_memory
    from tide_megatron.eval.humaneval import load_problems, run_humaneval
    from tide_megatron.eval.models import count_parameters
    from tide_megatron.eval.nll import bits_per_byte, read_heldout_text, split_windows, tokenize_with_bytes
    from tide_megatron.eval.prompts import stop_token_ids

    tasks, harness_tasks = _parse_tasks(args.tasks, suite=bool(args.suite))
    _check_positive(args)
    use_harness = bool(harness_tasks or args.suite)
    if args.data_dir:  # nothing may try the hub; `datasets` reads these when it is first imported
        os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.list_data_files:
        if not use_harness:
            raise SystemExit("tide-eval: --list-data-files needs lm_eval: tasks or --suite")
        return _list_data_files(args, harness_tasks)
    if not (args.hf_dir or args.mcore_dir):
        raise SystemExit("tide-eval: give the student with --hf-dir DIR or --mcore-dir DIR")
    if "bpb" in tasks and not args.heldout:
        raise SystemExit("tide-eval: --tasks bpb needs --heldout FILE_OR_DIR ...")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(args.seed)
    denoiser, full_forward, model, tokenizer, (mask_id, eos_id, pad_id), lm, closers = _load(args, device, use_harness)
    try:
        if tasks and lm is not None and lm.world_size > 1:
            raise SystemExit(f"tide-eval: --tasks {','.join(tasks)} run in one process; only lm_eval: tasks and "
                             f"--suite run data parallel under torchrun")
        max_new = args.max_new_tokens or DEFAULT_MAX_NEW_TOKENS
        cfg = SamplerConfig(mask_id=mask_id, pad_id=pad_id, eos_id=eos_id, block_size=args.block_size,
                            max_new_tokens=max_new, steps=args.steps or max_new, temperature=args.temperature,
                            stop_ids=stop_token_ids(tokenizer, eos_id))
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
        if use_harness:
            from tide_megatron.eval.harness.runner import HarnessRequest, flat_metrics, run_harness

            start = time.perf_counter()
            out = run_harness(lm, HarnessRequest(
                tasks=harness_tasks, suite=bool(args.suite), suite_tasks=_csv(args.suite_tasks),
                data_dir=args.data_dir, include_path=args.include_path, num_fewshot=args.num_fewshot,
                limit=args.limit, apply_chat_template=args.chat_template, log_samples=args.log_samples,
                confirm_run_unsafe_code=args.confirm_run_unsafe_code, paper_variant=args.paper_variant,
                seed=args.seed, note=_protocol_note(args)))
            if out is None:
                return None
            results["lm_eval"] = {k: v for k, v in out.items() if k != "samples"}
            results["lm_eval"]["seconds"] = time.perf_counter() - start
            results["lm_eval_samples"] = out["samples"]
            results["tasks"].update(flat_metrics(out["harness"]))
        mem, kind = peak_memory()
        results["peak_memory_bytes"], results["peak_memory_kind"] = mem, kind
        return results
    finally:
        for close in closers:
            close()


def _write_outputs(args: argparse.Namespace, results: dict[str, Any]) -> None:
    from tide_megatron.eval.report import write_json_atomic

    samples = results.pop("lm_eval_samples", None) or {}
    table = (results.get("lm_eval") or {}).get("paper_table")
    if table:
        print("\n" + table + "\n")
    if not args.output:
        return
    output = Path(args.output)
    if samples and args.log_samples:
        from tide_megatron.eval.harness.runner import write_samples

        written = write_samples(output.with_name(output.stem + "_samples"), samples)
        results["lm_eval"]["samples_files"] = [str(p) for p in written]
    write_json_atomic(str(output), results)
    print(f"results written to {output}")
    if table:
        md = output.with_suffix(".md")
        tmp = md.with_name(f".{md.name}.tmp")
        tmp.write_text(table + "\n")
        os.replace(tmp, md)
        print(f"paper table written to {md}")


@cli_errors("tide-eval")
def main(argv: Optional[Sequence[str]] = None) -> int:
    from tide_megatron.eval.report import format_table

    args = build_parser().parse_args(argv)
    try:
        results = run(args)
    except (ValueError, FileNotFoundError) as err:  # bad input: one line naming it, no traceback
        print(f"tide-eval: error: {err}", file=sys.stderr)
        return 2
    if results is None or "data_files" in results:  # ranks > 0 of a data-parallel run; or a listing
        return 0
    print(format_table(results))
    _write_outputs(args, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())

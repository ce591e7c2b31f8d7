"""Attention memory and time: FlexAttention from the block-diffusion description vs SDPA with the dense mask.

Usage: ``python benchmarks/attention.py [--lengths 512 1024] [--batch 1] [--heads 16] [--groups 8]
[--head-dim 128] [--block-size 32] [--device cpu|cuda] [--dtype float32|bfloat16] [--repeats 3]
[--threads N] [--json FILE]``. One core attention of the student (Qwen3-0.6B: 16 query heads, 8 KV heads,
head_dim 128) over ``[xt ; x0]``, so the sequence is 2L; defaults: batch 1 and fp32 on CPU, batch 8 and bf16
on CUDA.

Paths, each in a fresh subprocess (so one path's allocations cannot hide another's):
- ``sdpa_dense``: `SDPACoreAttention` with the explicit [b, 1, 2L, 2L] mask (today's CPU path; what TE's
  arbitrary-mask attention also needs);
- ``flex``: `FlexCoreAttention` with a `BlockDiffusionMask` (the GPU path: compiled FlexAttention; on CPU
  torch's eager reference implementation of the same op, since the compiled CPU kernel has no backward);
- ``flex_compiled_fwd`` (CPU, with ``--cpu-compiled``; needs TorchDynamo enabled): the compiled CPU kernel,
  forward only, i.e. what an inference-only teacher could use on CPU (first call = compilation).
Measured per path: median wall time of forward + backward and of forward alone (after one warm-up call,
whose time is printed too: it holds the compilation on CUDA); the bytes autograd saves for backward
(``saved_tensors_hooks``, unique storages); peak memory on top of the inputs and the mask: on CUDA
``max_memory_allocated``, on CPU the process's peak RSS (getrusage) with glibc's mmap threshold fixed so
freed buffers leave the RSS at once. The block mask (flex) is built per forward and timed inside it.
Each ratio is flex / sdpa_dense from the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

PATHS = ("sdpa_dense", "flex")
#: Optional (--cpu-compiled): compiled FlexAttention on CPU, forward only (torch 2.13 has no CPU backward for it).
CPU_COMPILED = "flex_compiled_fwd"


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def worker(args: argparse.Namespace) -> dict:
    import torch
    from megatron.core.transformer.enums import AttnMaskType
    from megatron.core.transformer.transformer_config import TransformerConfig

    from tide_megatron.distributed import ParallelLayout, build_model_grid, init_distributed
    from tide_megatron.models.attention import SDPACoreAttention
    from tide_megatron.models.attention_mask import BlockDiffusionMask
    from tide_megatron.models.flex_attention import FlexCoreAttention, block_mask_for
    from torch.nn.attention.flex_attention import flex_attention

    torch.set_num_threads(args.threads)
    dev, dtype = torch.device(args.device), getattr(torch, args.dtype)
    grid = None
    if args.path != CPU_COMPILED:  # (init_distributed applies the CPU compatibility layer, which inductor cannot trace)
        init_distributed("gloo" if dev.type == "cpu" else "nccl")
        grid = build_model_grid(ParallelLayout(), "bench")
    config = TransformerConfig(num_layers=1, hidden_size=args.heads * args.head_dim, num_attention_heads=args.heads,
                               num_query_groups=args.groups, kv_channels=args.head_dim, attention_dropout=0.0,
                               use_cpu_initialization=True)
    b, S = args.batch, 2 * args.length
    if args.path == CPU_COMPILED:
        compiled = torch.compile(flex_attention)

        def core(q, k, v, m):  # megatron layout in and out, as the core attentions
            bm = block_mask_for(m, b, S, S, dev)
            ctx = compiled(*(x.permute(1, 2, 0, 3) for x in (q, k, v)), block_mask=bm, enable_gqa=True)
            return ctx.permute(2, 0, 1, 3).reshape(S, b, -1)
    else:
        core_cls = SDPACoreAttention if args.path == "sdpa_dense" else FlexCoreAttention
        core = core_cls(config, 1, AttnMaskType.arbitrary, "self", pg_collection=grid.pgs)
    grad = args.path != CPU_COMPILED
    g = torch.Generator(device=dev).manual_seed(0)
    q = torch.randn(S, b, args.heads, args.head_dim, generator=g, device=dev, dtype=dtype, requires_grad=grad)
    k = torch.randn(S, b, args.groups, args.head_dim, generator=g, device=dev, dtype=dtype, requires_grad=grad)
    v = torch.randn(S, b, args.groups, args.head_dim, generator=g, device=dev, dtype=dtype, requires_grad=grad)
    spec = BlockDiffusionMask.halves(b, args.length, args.block_size, "xt_x0", device=dev)
    dense = spec.blocked() if args.path == "sdpa_dense" else None  # built once per run, as the trainer does

    def mask():  # the flex path gets a fresh description per forward (its block mask is built inside)
        return dense if dense is not None else BlockDiffusionMask(spec.segment, spec.block)

    def step(backward: bool) -> None:
        out = core(q, k, v, mask())
        if backward:
            out.float().sum().backward()
            q.grad = k.grad = v.grad = None
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def timed(backward: bool) -> list[float]:
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            step(backward)
            times.append(time.perf_counter() - t0)
        return times

    saved: dict[int, int] = {}

    def pack(t):
        if t.device.type == dev.type:
            saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    t0 = time.perf_counter()
    step(grad)  # warm-up (compiles on CUDA)
    first = time.perf_counter() - t0
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base, slack = _rss_bytes(), _peak_rss_bytes()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = core(q, k, v, mask())
    inputs = {t.untyped_storage().data_ptr() for t in (q, k, v)}
    saved_bytes = sum(n for p, n in saved.items() if p not in inputs)
    del out
    fwd_bwd = timed(True) if grad else [float("nan")]
    with torch.no_grad():
        fwd = timed(False)
    peak = (torch.cuda.max_memory_allocated() - base) if dev.type == "cuda" else (_peak_rss_bytes() - base)
    result = {"path": args.path, "length": args.length, "seq": S, "first_call_s": first,
              "fwd_bwd_s": statistics.median(fwd_bwd), "fwd_s": statistics.median(fwd), "saved_bytes": saved_bytes,
              "peak_extra_bytes": peak}
    if dev.type == "cpu":
        result["slack_bytes"] = max(0, slack - base)
    if grid is not None:
        grid.close()
    return result


def run_path(args: argparse.Namespace, path: str, length: int) -> dict:
    cmd = [sys.executable, __file__, "--worker", "--path", path, "--length", str(length)]
    for name in ("batch", "heads", "groups", "head_dim", "block_size", "device", "dtype", "repeats", "threads"):
        cmd += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_=str(1 << 20))
    if path == CPU_COMPILED:
        env.pop("TORCHDYNAMO_DISABLE", None)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode:
        raise RuntimeError(f"{path} at L={length} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _mib(n: float) -> str:
    return f"{n / 2**20:9.1f}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--lengths", type=int, nargs="+", default=[512, 1024], help="L; the [xt ; x0] sequence is 2L")
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--groups", type=int, default=8)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--block-size", type=int, default=32)
    p.add_argument("--device", default=None, help="cpu | cuda (default: cuda when available)")
    p.add_argument("--dtype", default=None, help="float32 | bfloat16 (default: float32 on CPU, bfloat16 on CUDA)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")))
    p.add_argument("--cpu-compiled", action="store_true", help=f"also run {CPU_COMPILED} (CPU; compiles ~100 s)")
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--path", choices=PATHS + (CPU_COMPILED,), help=argparse.SUPPRESS)
    p.add_argument("--length", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    args.dtype = args.dtype or ("bfloat16" if args.device == "cuda" else "float32")
    args.batch = args.batch or (8 if args.device == "cuda" else 1)
    if args.worker:
        print(json.dumps(worker(args)))
        return 0
    print(f"core attention, [xt ; x0]: batch {args.batch}, {args.heads} q heads / {args.groups} kv heads, head_dim "
          f"{args.head_dim}, block {args.block_size}, {args.dtype} on {args.device}, {args.threads} thread(s), "
          f"median of {args.repeats}")
    print(f"{'L':>5} {'2L':>5} {'path':<17} {'fwd+bwd s':>10} {'fwd s':>8} {'first s':>8} {'saved MiB':>10} "
          f"{'peak MiB':>9}")
    paths = PATHS + ((CPU_COMPILED,) if args.cpu_compiled and args.device == "cpu" else ())
    results = []
    for length in args.lengths:
        rows = {path: run_path(args, path, length) for path in paths}
        for path in paths:
            r = rows[path]
            print(f"{length:>5} {2 * length:>5} {path:<17} {r['fwd_bwd_s']:>10.4f} {r['fwd_s']:>8.4f} "
                  f"{r['first_call_s']:>8.3f} {_mib(r['saved_bytes']):>10} {_mib(r['peak_extra_bytes']):>9}")
        d, f = rows["sdpa_dense"], rows["flex"]
        ratio = {key: f[key] / d[key] if d[key] else float("nan")
                 for key in ("fwd_bwd_s", "fwd_s", "saved_bytes", "peak_extra_bytes")}
        print(f"{'':>5} {'':>5} {'flex/dense':<17} {ratio['fwd_bwd_s']:>10.2f} {ratio['fwd_s']:>8.2f} {'':>8} "
              f"{ratio['saved_bytes']:>10.2f} {ratio['peak_extra_bytes']:>9.2f}")
        if CPU_COMPILED in rows:
            ratio["compiled_fwd_s"] = rows[CPU_COMPILED]["fwd_s"] / d["fwd_s"]
            print(f"{'':>5} {'':>5} {'compiled/dense fwd':<17} {'':>10} {ratio['compiled_fwd_s']:>8.2f}")
        results.append({"length": length, "paths": rows, "flex_over_dense": ratio})
    if args.json:
        tmp = args.json + ".tmp"
        with open(tmp, "w") as fh:
            json.dump({"device": args.device, "dtype": args.dtype, "batch": args.batch, "results": results}, fh, indent=2)
        os.replace(tmp, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())

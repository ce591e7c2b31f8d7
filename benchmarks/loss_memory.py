"""Peak memory and time of TIDAL and KL (forward + backward): the row-chunked kernel vs a naive fp32 one.

Usage: ``python benchmarks/loss_memory.py [--rows 256] [--vocab 151936] [--dtype float32|bfloat16]
[--device cpu|cuda] [--repeats 3] [--threads 1]``. The issue's target size is ``--rows 4096`` at the full
vocabulary; on a small CPU machine the naive variant alone needs ~20 GB there, so the default is 256 rows
(the kernel's memory and time scale linearly in rows, so the ratios carry over; rerun at 4096 where memory allows).

How memory is measured (honest for torch CPU tensors, which tracemalloc cannot see):
- every variant runs in a fresh subprocess that builds its inputs in place (no temporaries), records its
  resident set size (RSS, /proc/self/statm), runs forward+backward ``repeats`` times, then reads the
  process's lifetime peak RSS (getrusage ru_maxrss). "peak extra" = peak RSS - RSS before the first run,
  i.e. everything the loss allocates on top of its inputs, including the [n, V] input gradient that both
  variants must produce. The worker also reports the peak recorded before the run ("slack") to show the
  baseline was not already exceeded by input construction. Each worker makes one tiny call first so that
  one-time library initialisation is not counted, and runs with glibc's mmap threshold fixed at 1 MiB so
  that freed tensor buffers leave the RSS at once (otherwise the RSS would show allocator caching);
- on CUDA the same is done with torch.cuda.max_memory_allocated (exact allocator figures).
Time is the median wall time of the forward+backward repeats after one warm-up, same thread count.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

VARIANTS = ("tidal_chunked", "tidal_naive", "kl_chunked", "kl_naive")
T = 2.0


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def naive_tidal(zs, zt, lam):
    """The direct formula (§3): whole [n, V] fp32 tensors, autograd for the backward."""
    import torch

    u, v = zs.float() / T, zt.float() / T
    r = torch.softmax((1 - lam[:, None]) * u + lam[:, None] * v, -1).detach()
    kl = (r * (torch.log(r.clamp_min(1e-8)) - torch.log_softmax(u, -1))).sum(-1)
    return T * T * kl.mean()


def naive_kl(zs, zt):
    import torch

    ls, lt = torch.log_softmax(zs.float() / T, -1), torch.log_softmax(zt.float() / T, -1)
    return T * T * (lt.exp() * (lt - ls)).sum(-1).mean()


def worker(args: argparse.Namespace) -> dict:
    import torch

    from tide_megatron.losses import kl_loss, tidal_loss

    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    dev = torch.device(args.device)
    g = torch.Generator(device=dev).manual_seed(0)
    zs = torch.empty(args.rows, args.vocab, dtype=dtype, device=dev)
    zt = torch.empty(args.rows, args.vocab, dtype=dtype, device=dev)
    zs.normal_(generator=g).mul_(3)
    zt.normal_(generator=g).mul_(3)
    zs.requires_grad_()
    lam = torch.full((args.rows,), 0.3, device=dev)
    fn = {
        "tidal_chunked": lambda: tidal_loss(zs, zt, lam, temperature=T),
        "tidal_naive": lambda: naive_tidal(zs, zt, lam),
        "kl_chunked": lambda: kl_loss(zs, zt, T),
        "kl_naive": lambda: naive_kl(zs, zt),
    }[args.worker]

    def step():
        zs.grad = None
        loss = fn()
        loss.backward()
        return float(loss)

    # One tiny call first, so one-time library initialisation (kernels, thread pools) is not counted.
    small = zs.detach()[:2].clone().requires_grad_()
    {"tidal_chunked": lambda: tidal_loss(small, zt[:2], lam[:2], temperature=T),
     "tidal_naive": lambda: naive_tidal(small, zt[:2], lam[:2]),
     "kl_chunked": lambda: kl_loss(small, zt[:2], T),
     "kl_naive": lambda: naive_kl(small, zt[:2])}[args.worker]().backward()
    del small
    cuda = dev.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base, slack = torch.cuda.memory_allocated(), 0
    else:
        base = _rss_bytes()
        slack = max(0, _peak_rss_bytes() - base)
    value = step()  # warm-up, also counted in the peak
    times = []
    for _ in range(args.repeats):
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        step()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated() if cuda else _peak_rss_bytes()
    times.sort()
    return {"variant": args.worker, "loss": value, "peak_extra": peak - base, "slack": slack,
            "median_s": times[len(times) // 2], "input_bytes": zs.numel() * zs.element_size()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=256, help="distilled rows n (issue target: 4096)")
    p.add_argument("--vocab", type=int, default=151936, help="vocabulary columns V (Qwen3: 151936)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="logit dtype")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--repeats", type=int, default=3, help="timed forward+backward runs after one warm-up")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (same for every variant)")
    p.add_argument("--worker", choices=VARIANTS, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.rows < 1 or args.vocab < 2 or args.repeats < 1:
        p.error("--rows >= 1, --vocab >= 2 and --repeats >= 1 are required")
    if args.worker:
        print(json.dumps(worker(args)))
        return

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    # A fixed 1 MiB mmap threshold makes glibc return every freed tensor buffer to the OS at once, so
    # RSS follows live memory instead of allocator caching (same setting for every variant).
    env = dict(os.environ, PYTHONPATH=repo + os.pathsep + os.environ.get("PYTHONPATH", ""),
               TORCHDYNAMO_DISABLE="1", OMP_NUM_THREADS=str(args.threads), MALLOC_MMAP_THRESHOLD_="1048576")
    results = {}
    for variant in VARIANTS:
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", variant, "--rows", str(args.rows),
               "--vocab", str(args.vocab), "--dtype", args.dtype, "--device", args.device,
               "--repeats", str(args.repeats), "--threads", str(args.threads)]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if out.returncode:
            sys.exit(f"worker {variant} failed (rc={out.returncode}):\n{out.stderr[-3000:]}")
        results[variant] = json.loads(out.stdout.strip().splitlines()[-1])

    mib = 1 << 20
    first = next(iter(results.values()))
    print(f"rows={args.rows} vocab={args.vocab} dtype={args.dtype} device={args.device} threads={args.threads} "
          f"T={T}; one [n, V] input = {first['input_bytes'] / mib:.1f} MiB")
    print(f"{'variant':<15}{'loss':>14}{'peak extra MiB':>16}{'(slack MiB)':>13}{'median s':>10}")
    for r in results.values():
        print(f"{r['variant']:<15}{r['loss']:>14.6f}{r['peak_extra'] / mib:>16.1f}{r['slack'] / mib:>13.1f}"
              f"{r['median_s']:>10.3f}")
    for loss in ("tidal", "kl"):
        ours, naive = results[f"{loss}_chunked"], results[f"{loss}_naive"]
        mem = ours["peak_extra"] / max(1, naive["peak_extra"])
        speed = ours["median_s"] / naive["median_s"]
        rel = abs(ours["loss"] - naive["loss"]) / max(1e-12, abs(naive["loss"]))
        print(f"{loss}: peak memory ratio chunked/naive = {mem:.3f} (goal <= 0.3), "
              f"time ratio = {speed:.3f} (goal <= 1.0), relative loss difference = {rel:.2e}")


if __name__ == "__main__":
    main()

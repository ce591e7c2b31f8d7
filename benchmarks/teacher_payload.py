"""Peak memory and time of teacher payload (a) — vocab-parallel log p(target), chunked — against
materialising the full-vocabulary logits (gathered over TP, then log-softmax), at TP=1 and TP=2 (§9.21).

Full size: V=157,184 (LLaDA2), L=1,024, 8 sequences, hidden 2,048, bf16 (GPU). On CPU everything that
scales with tokens is divided by --scale (tokens and the payload's logits budget), so the memory ratio
is the one of the full-size run; the hidden size is reduced to keep the matmul affordable.

    python benchmarks/teacher_payload.py               # CPU defaults: --scale 8 --hidden 256, fp32
    python benchmarks/teacher_payload.py --scale 1     # GPU: full size, bf16

Peak memory: CUDA's allocator peak on GPU; on CPU the process's peak resident set (VmHWM, reset
through /proc/self/clear_refs before each variant), minus the resident set before it.
"""

from __future__ import annotations

import argparse
import os
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tide_megatron.teacher.payloads import LOGIT_CHUNK_ELEMENTS, chunk_rows, token_logprobs


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


class PeakMemory:
    """Peak extra memory (MiB) used inside the block."""

    def __init__(self, device: torch.device):
        self.device = device

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")  # reset VmHWM to the current resident set
            self.base = _rss_kib("VmRSS") * 1024
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated()
        else:
            peak = _rss_kib("VmHWM") * 1024
        self.mib = (peak - self.base) / 2**20


def full_logits_logprobs(hidden, w_local, targets, group) -> torch.Tensor:
    """Baseline: every rank materialises [N, V] logits (all-gathered over TP), then log-softmax in fp32."""
    logits = hidden @ w_local.t()
    if group is not None and dist.get_world_size(group) > 1:
        parts = [torch.empty_like(logits) for _ in range(dist.get_world_size(group))]
        dist.all_gather(parts, logits, group=group)
        logits = torch.cat(parts, -1)
        del parts
    return logits.float().log_softmax(-1).gather(-1, targets[:, None]).squeeze(-1)


def _worker(rank: int, world: int, args, results):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(args.port))
    device = torch.device("cuda", rank) if torch.cuda.is_available() else torch.device("cpu")
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend, rank=rank, world_size=world)
    group = dist.group.WORLD
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    n_tokens = args.sequences * args.seq_len // args.scale
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(n_tokens, args.hidden, generator=gen).to(device, dtype)
    w_full = torch.randn(args.vocab, args.hidden, generator=gen) / args.hidden ** 0.5
    w_local = w_full.chunk(world, 0)[rank].to(device, dtype).contiguous()
    del w_full
    targets = torch.randint(0, args.vocab, (n_tokens,), generator=gen).to(device)
    rows = chunk_rows(w_local.shape[0], LOGIT_CHUNK_ELEMENTS // args.scale)

    def payload():
        return token_logprobs(hidden[None], w_local, targets[None], group, chunk_tokens=rows)[0]

    def baseline():
        return full_logits_logprobs(hidden, w_local, targets, group)

    out = {}
    for name, fn in (("full_logits", baseline), ("payload_a", payload)):
        fn()  # warm-up
        dist.barrier()
        with PeakMemory(device) as mem:
            t0 = time.perf_counter()
            value = fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            seconds = time.perf_counter() - t0
        out[name] = (value, mem.mib, seconds)
        del value
    err = (out["full_logits"][0] - out["payload_a"][0]).abs().max().item()
    results[rank] = {k: (v[1], v[2]) for k, v in out.items()} | {"max_abs_diff": err, "rows": rows,
                                                                  "tokens": n_tokens}
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    gpu = torch.cuda.is_available()
    parser.add_argument("--vocab", type=int, default=157184)
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--sequences", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=2048 if gpu else 256)
    parser.add_argument("--scale", type=int, default=1 if gpu else 8,
                        help="divide tokens and the payload logits budget by this (same memory ratio)")
    parser.add_argument("--tp", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--port", type=int, default=29611)
    args = parser.parse_args()
    print(f"V={args.vocab} L={args.seq_len} sequences={args.sequences} hidden={args.hidden} scale=1/{args.scale} "
          f"device={'cuda' if gpu else 'cpu'}")
    print(f"{'tp':>3} {'variant':>12} {'peak MiB':>10} {'time s':>8} {'mem ratio':>10} {'time ratio':>10}")
    for tp in args.tp:
        results = mp.Manager().dict()
        mp.spawn(_worker, args=(tp, args, results), nprocs=tp, join=True)
        args.port += 1
        worst = {k: max(results[r][k][0] for r in range(tp)) for k in ("full_logits", "payload_a")}
        slow = {k: max(results[r][k][1] for r in range(tp)) for k in ("full_logits", "payload_a")}
        for k in ("full_logits", "payload_a"):
            print(f"{tp:>3} {k:>12} {worst[k]:>10.1f} {slow[k]:>8.3f} {worst[k] / worst['full_logits']:>10.3f} "
                  f"{slow[k] / slow['full_logits']:>10.3f}")
        print(f"    tokens={results[0]['tokens']} payload rows/chunk={results[0]['rows']} "
              f"max |payload - full| = {max(results[r]['max_abs_diff'] for r in range(tp)):.2e}")


if __name__ == "__main__":
    main()

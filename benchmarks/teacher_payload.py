"""Per-rank peak memory and time of the teacher payloads at TP=1 and TP=2 (§9.21), each against its baseline in
the same run:

(a) vocab-parallel log p(target), chunked (Pipeline A), against materialising the full-vocabulary logits
    (gathered over TP, then log-softmax). Full size: V=157,184 (LLaDA2), L=1,024, 8 sequences, hidden 2,048.
(b) logit rows at the distilled positions (Pipeline B): the all-to-all that sends each rank only its own
    rows' full-vocabulary slices (`payload_exchange.vocab_shards_to_own_rows`, what the trainer does), against
    all-gathering every rank's rows onto every rank and slicing (`payloads.logit_rows` + `own_rows`, before).
    Full size: V=151,936 cut to the 151,646 shared ids (WeDLM), L*b/2 distilled rows per rank, hidden 4,096.

bf16 on GPU. On CPU everything that scales with tokens is divided by --scale (tokens, rows and the payload's
logits budget), so the memory ratio is the one of the full-size run; the hidden size is reduced to keep the
matmul affordable.

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

from tide_megatron.distributed.payload_exchange import own_rows, row_counts, vocab_shards_to_own_rows
from tide_megatron.teacher.payloads import LOGIT_CHUNK_ELEMENTS, chunk_rows, logit_row_shard, logit_rows, token_logprobs

VARIANTS = {"a": ("full_logits", "payload_a"), "b": ("rows_allgather", "rows_alltoall")}


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

    # Payload (b): this rank's distilled rows, gathered over the group for one teacher forward (as the trainer
    # does); each TP rank computes its vocabulary slice of all of them.
    n_own = args.sequences * args.seq_len // (2 * args.scale) + 7 * rank  # ranks ask for different counts
    counts = row_counts(n_own, group)
    hidden_b = torch.randn(sum(counts), args.hidden_b, generator=gen).to(device, dtype)
    w_b = (torch.randn(args.vocab_b, args.hidden_b, generator=gen) / args.hidden_b ** 0.5).chunk(world, 0)[rank]
    w_b = w_b.to(device, dtype).contiguous()

    def rows_allgather():
        return own_rows(logit_rows(hidden_b, w_b, args.shared_vocab, group), counts, group)  # a view: all rows stay

    def rows_alltoall():
        shard = logit_row_shard(hidden_b, w_b, args.shared_vocab, group)
        return vocab_shards_to_own_rows(shard, counts, group)[:, :args.shared_vocab]

    out = {}
    for name, fn in (("full_logits", baseline), ("payload_a", payload), ("rows_allgather", rows_allgather),
                     ("rows_alltoall", rows_alltoall)):
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
    err_a = (out["full_logits"][0] - out["payload_a"][0]).abs().max().item()
    err_b = (out["rows_allgather"][0] - out["rows_alltoall"][0]).abs().max().item()
    results[rank] = {k: (v[1], v[2]) for k, v in out.items()} | {
        "max_abs_diff": {"a": err_a, "b": err_b}, "rows": rows, "tokens": n_tokens,
        "shape_b": tuple(out["rows_alltoall"][0].shape)}
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
    parser.add_argument("--vocab-b", type=int, default=151936, help="payload (b) teacher vocabulary (WeDLM)")
    parser.add_argument("--shared-vocab", type=int, default=151646, help="payload (b) ids kept (§2.2)")
    parser.add_argument("--hidden-b", type=int, default=4096 if gpu else 256)
    parser.add_argument("--tp", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--port", type=int, default=29611)
    args = parser.parse_args()
    print(f"V={args.vocab} L={args.seq_len} sequences={args.sequences} hidden={args.hidden} scale=1/{args.scale} "
          f"device={'cuda' if gpu else 'cpu'}; payload (b): V={args.vocab_b} shared={args.shared_vocab} "
          f"hidden={args.hidden_b}")
    print("peak MiB and time s: the worst rank; ratios against the baseline (first row of each payload)")
    print(f"{'tp':>3} {'variant':>14} {'peak MiB':>10} {'time s':>8} {'mem ratio':>10} {'time ratio':>10}")
    for tp in args.tp:
        results = mp.Manager().dict()
        mp.spawn(_worker, args=(tp, args, results), nprocs=tp, join=True)
        args.port += 1
        for payload, names in VARIANTS.items():
            worst = {k: max(results[r][k][0] for r in range(tp)) for k in names}
            slow = {k: max(results[r][k][1] for r in range(tp)) for k in names}
            for k in names:
                print(f"{tp:>3} {k:>14} {worst[k]:>10.1f} {slow[k]:>8.3f} {worst[k] / worst[names[0]]:>10.3f} "
                      f"{slow[k] / slow[names[0]]:>10.3f}")
            diff = max(results[r]["max_abs_diff"][payload] for r in range(tp))
            if payload == "a":
                print(f"    tokens={results[0]['tokens']} payload rows/chunk={results[0]['rows']} "
                      f"max |payload - full| = {diff:.2e}")
            else:
                own = ", ".join(f"rank {r}: {results[r]['shape_b']}" for r in range(tp))
                print(f"    own rows [n, shared vocab] {own}; max |all-to-all - all-gather| = {diff:.2e}")


if __name__ == "__main__":
    main()

"""fp32 vocab-parallel primitives shared by every loss (spec §9.2, §9.12, §9.21).

Logits may be sharded over a tensor-parallel group in megatron-core's layout: rank r holds the
vocabulary columns ``[r*V_local, (r+1)*V_local)``. Nothing here all-gathers the vocabulary: row
statistics (max, sum of exp, partial sums) are all-reduced, which costs O(rows) communication.
``tp_group=None`` (or a group of size 1) means the logits are unsharded.

Rows are processed in chunks of ``chunk_rows`` so that the fp32 temporaries are O(chunk_rows x V),
never a full fp32 copy of ``[n, V]``.
"""

from __future__ import annotations

from typing import Iterator, Optional

import torch
import torch.distributed as dist

from tide_megatron.distributed.vocab_parallel import (  # noqa: F401  (re-exported for the losses)
    ProcessGroup,
    all_reduce,
    global_logsumexp,
    global_max,
    local_vocab_limit,
    tp_rank,
    tp_size,
    vocab_start,
)

# fp32 elements per row chunk: 2**22 elements = 16 MiB of fp32 per temporary (27 rows at V = 151936).
DEFAULT_CHUNK_ELEMENTS = 1 << 22


def default_chunk_rows(vocab: int, chunk_rows: Optional[int] = None) -> int:
    """Rows per chunk: ``chunk_rows`` if given, else enough rows for about 2**22 fp32 elements."""
    if chunk_rows is not None:
        if chunk_rows < 1:
            raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
        return chunk_rows
    return max(1, DEFAULT_CHUNK_ELEMENTS // max(1, vocab))


def row_chunks(n: int, rows: int) -> Iterator[slice]:
    """Consecutive row slices of at most ``rows`` rows covering ``[0, n)``."""
    for start in range(0, n, rows):
        yield slice(start, min(n, start + rows))


def logsumexp(logits: torch.Tensor, tp_group: ProcessGroup = None, chunk_rows: Optional[int] = None) -> torch.Tensor:
    """fp32 logsumexp over the last (possibly vocab-parallel) dimension, no gradient; shape ``logits.shape[:-1]``."""
    lead = logits.shape[:-1]
    flat = logits.detach().reshape(-1, logits.shape[-1])
    out = torch.empty(flat.shape[0], dtype=torch.float32, device=logits.device)
    for sl in row_chunks(flat.shape[0], default_chunk_rows(flat.shape[1], chunk_rows)):
        out[sl] = global_logsumexp(flat[sl].float(), tp_group)
    return out.reshape(lead)


class _TokenLogprobs(torch.autograd.Function):
    """log softmax(z)[target] in fp32 for vocab-parallel z, recomputing softmax per chunk in backward.

    Saves only the input logits (already alive) and the fp32 logsumexp ``[n]``; the input is never
    modified (unlike megatron-core's vocab_parallel_cross_entropy, which works in place).
    """

    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor, group: ProcessGroup, chunk_rows: Optional[int]):
        n, v_local = logits.shape
        start = vocab_start(v_local, group)
        local_t = targets - start
        in_shard = (local_t >= 0) & (local_t < v_local)
        safe_t = torch.where(in_shard, local_t, torch.zeros_like(local_t))
        picked = logits.gather(1, safe_t.unsqueeze(1)).squeeze(1).float()
        picked = torch.where(in_shard, picked, torch.zeros_like(picked))

        rows = default_chunk_rows(v_local, chunk_rows)
        # Max in the input dtype is exact; one all-reduce for all rows.
        m = logits.amax(dim=-1).float() if v_local else torch.full((n,), float("-inf"), device=logits.device)
        all_reduce(m, dist.ReduceOp.MAX, group)
        sumexp = torch.empty(n, dtype=torch.float32, device=logits.device)
        work = torch.empty(min(rows, n), v_local, dtype=torch.float32, device=logits.device)
        for sl in row_chunks(n, rows):
            x = work[: sl.stop - sl.start].copy_(logits[sl])
            sumexp[sl] = x.sub_(m[sl].unsqueeze(1)).exp_().sum(dim=1)
        del work
        stats = torch.stack([sumexp, picked])
        all_reduce(stats, dist.ReduceOp.SUM, group)
        lse = m + torch.log(stats[0])
        ctx.save_for_backward(logits, safe_t, in_shard, lse)
        ctx.rows = rows
        return stats[1] - lse

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        logits, safe_t, in_shard, lse = ctx.saved_tensors
        grad = torch.empty_like(logits)
        g = grad_out.float()
        work = torch.empty(min(ctx.rows, logits.shape[0]), logits.shape[1], dtype=torch.float32, device=logits.device)
        for sl in row_chunks(logits.shape[0], ctx.rows):
            d = work[: sl.stop - sl.start].copy_(logits[sl]).sub_(lse[sl].unsqueeze(1)).exp_().neg_()
            rows_idx = torch.arange(sl.start, sl.stop, device=logits.device) - sl.start
            d[rows_idx, safe_t[sl]] += in_shard[sl].float()
            grad[sl] = d.mul_(g[sl].unsqueeze(1))
        return grad, None, None, None


def token_logprobs(
    logits: torch.Tensor, targets: torch.Tensor, tp_group: ProcessGroup = None, chunk_rows: Optional[int] = None
) -> torch.Tensor:
    """``z[target] - logsumexp(z)`` in fp32 over the full (possibly vocab-parallel) vocabulary (§1.5, §5.6).

    ``logits``: ``[..., V_local]`` in any dtype; ``targets``: int64 ``[...]`` of global vocabulary ids
    in ``[0, V)``. Returns fp32 ``[...]``, differentiable w.r.t. ``logits``.
    """
    if logits.shape[:-1] != targets.shape:
        raise ValueError(f"token_logprobs: logits {tuple(logits.shape)} and targets {tuple(targets.shape)} "
                         "must share every dimension but the last")
    v = logits.shape[-1] * tp_size(tp_group)
    if targets.numel() and (int(targets.min()) < 0 or int(targets.max()) >= v):
        raise ValueError(f"token_logprobs: targets must be vocabulary ids in [0, {v}), "
                         f"got range [{int(targets.min())}, {int(targets.max())}]")
    # Reorder the leading dims to memory order first, so a transposed view (megatron's [s, b, V] seen
    # as [b, s, V]) is flattened without copying the logits.
    lead = logits.dim() - 1
    perm = sorted(range(lead), key=lambda d: -logits.stride(d))
    logits_p, targets_p = logits.permute(*perm, lead), targets.permute(*perm)
    flat = logits_p.reshape(-1, logits.shape[-1])
    out = _TokenLogprobs.apply(flat, targets_p.reshape(-1).long(), tp_group, chunk_rows)
    inverse = sorted(range(lead), key=lambda d: perm[d])
    return out.reshape(targets_p.shape).permute(*inverse)

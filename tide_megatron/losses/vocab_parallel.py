"""fp32 vocab-parallel primitives shared by every loss (spec §9.2, §9.12, §9.21).

Logits may be sharded over a tensor-parallel group in megatron-core's layout: rank r holds the
vocabulary columns ``[r*V_local, (r+1)*V_local)``. Nothing here all-gathers the vocabulary: row
statistics (max, sum of exp, partial sums) are all-reduced, which costs O(rows) communication.
``tp_group=None`` (or a group of size 1) means the logits are unsharded.

Rows are processed in chunks of ``chunk_rows`` so that the fp32 temporaries are O(chunk_rows x V),
never a full fp32 copy of ``[n, V]``.
"""

from __future__ import annotations

from typing import Optional

import torch

from tide_megatron.distributed.vocab_parallel import (
    ProcessGroup,
    default_chunk_rows,
    logsumexp_and_target,
    row_chunks,
    tp_size,
    vocab_start,
)


def logsumexp(logits: torch.Tensor, tp_group: ProcessGroup = None, chunk_rows: Optional[int] = None) -> torch.Tensor:
    """fp32 logsumexp over the last (possibly vocab-parallel) dimension, no gradient; shape ``logits.shape[:-1]``."""
    lse, _ = logsumexp_and_target(logits.detach().reshape(-1, logits.shape[-1]), tp_group, chunk_rows=chunk_rows)
    return lse.reshape(logits.shape[:-1])


class _TokenLogprobs(torch.autograd.Function):
    """log softmax(z)[target] in fp32 for vocab-parallel z, recomputing softmax per chunk in backward.

    Saves only the input logits (already alive) and, across a tensor-parallel group, the fp32 logsumexp ``[n]``;
    the input is never modified (unlike megatron-core's vocab_parallel_cross_entropy, which works in place).
    Unsharded logits go through ATen's fused log-softmax and softmax kernels, which reduce and write each row
    while it is in cache (about two thirds of the time of separate max, subtract, exp and sum passes).
    """

    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor, group: ProcessGroup, chunk_rows: Optional[int]):
        v_local = logits.shape[1]
        local_t = targets - vocab_start(v_local, group)
        in_shard = (local_t >= 0) & (local_t < v_local)
        safe_t = torch.where(in_shard, local_t, torch.zeros_like(local_t))
        rows = default_chunk_rows(v_local, chunk_rows)
        ctx.rows = rows
        if tp_size(group) > 1:
            lse, picked = logsumexp_and_target(logits, group, targets, rows)
            ctx.save_for_backward(logits, safe_t, in_shard, lse)
            return picked - lse
        ctx.save_for_backward(logits, safe_t, in_shard)
        out = torch.empty(logits.shape[0], dtype=torch.float32, device=logits.device)
        work = torch.empty(min(rows, logits.shape[0]), v_local, dtype=torch.float32, device=logits.device)
        for sl in row_chunks(logits.shape[0], rows):
            ls = torch.log_softmax(logits[sl], 1, dtype=torch.float32, out=work[: sl.stop - sl.start])
            out[sl] = ls.gather(1, safe_t[sl].unsqueeze(1)).squeeze(1)
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        logits, safe_t, in_shard, *lse = ctx.saved_tensors
        grad = torch.empty_like(logits)
        neg_g = grad_out.float().neg().unsqueeze(1)
        fp32 = logits.dtype == torch.float32
        work = None if fp32 else torch.empty(min(ctx.rows, logits.shape[0]), logits.shape[1], dtype=torch.float32,
                                             device=logits.device)
        for sl in row_chunks(logits.shape[0], ctx.rows):
            # g * (onehot(target) - softmax(z)), straight into the gradient when the logits are fp32 (no temporary)
            d = grad[sl] if fp32 else work[: sl.stop - sl.start]
            if lse:  # vocab-parallel: the softmax over the whole vocabulary needs the group's logsumexp
                torch.sub(logits[sl], lse[0][sl].unsqueeze(1), out=d).exp_()
            else:
                torch.softmax(logits[sl], 1, dtype=torch.float32, out=d)
            d.mul_(neg_g[sl])
            d[torch.arange(sl.stop - sl.start, device=d.device), safe_t[sl]] -= neg_g[sl, 0] * in_shard[sl]
            if not fp32:
                grad[sl] = d
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

"""Tensor-parallel vocabulary primitives (megatron-core layout: rank r holds ids [r*V_local, (r+1)*V_local)).

Row statistics (max, sum of exp, a picked logit) are all-reduced over the group, so the vocabulary is
never gathered. Shared by the teacher payloads and the losses; ``group=None`` means unsharded. Rows are
processed ``chunk_rows`` at a time, so fp32 temporaries are O(chunk_rows x V_local), never ``[n, V]``;
`head_logsumexp_and_target` goes further and never materialises the logits at all.
"""

from __future__ import annotations

from typing import Iterator, Optional

import torch
import torch.distributed as dist

ProcessGroup = Optional[dist.ProcessGroup]


def tp_size(group: ProcessGroup) -> int:
    """Number of ranks sharing the vocabulary (1 when unsharded)."""
    if group is None or not dist.is_available() or not dist.is_initialized():
        return 1
    return dist.get_world_size(group)


def tp_rank(group: ProcessGroup) -> int:
    """This rank's index in the tensor-parallel group (0 when unsharded)."""
    return dist.get_rank(group) if tp_size(group) > 1 else 0


def all_reduce(tensor: torch.Tensor, op: dist.ReduceOp, group: ProcessGroup) -> torch.Tensor:
    """In-place all-reduce over the tensor-parallel group; a no-op when unsharded."""
    if tp_size(group) > 1:
        dist.all_reduce(tensor, op=op, group=group)
    return tensor


def vocab_start(local_vocab: int, group: ProcessGroup) -> int:
    """Global id of this rank's first vocabulary column (megatron-core's equal-shard layout)."""
    return tp_rank(group) * local_vocab


def local_vocab_limit(local_vocab: int, vocab_limit: Optional[int], group: ProcessGroup) -> int:
    """How many of this rank's columns have a global id below ``vocab_limit`` (the shared-vocab slice, §9.1).

    Slicing ``[..., :vocab_limit]`` before softmax is the same as keeping, on each rank, the first
    ``local_vocab_limit`` local columns; a rank may keep none.
    """
    if vocab_limit is None:
        return local_vocab
    if vocab_limit <= 0:
        raise ValueError(f"vocab_limit must be positive, got {vocab_limit}")
    global_vocab = local_vocab * tp_size(group)
    if vocab_limit > global_vocab:
        raise ValueError(f"vocab_limit={vocab_limit} exceeds the logits' vocabulary of {global_vocab} columns")
    return max(0, min(local_vocab, vocab_limit - vocab_start(local_vocab, group)))


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


def logsumexp_and_target(logits: torch.Tensor, group: ProcessGroup, targets: Optional[torch.Tensor] = None,
                         chunk_rows: Optional[int] = None) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Row logsumexp over the full vocabulary of vocab-parallel logits ``[n, V_local]`` (any dtype), in fp32 and
    without gradient; with ``targets`` (global ids ``[n]``) also each row's target logit, in fp32.

    Two all-reduces whatever ``n``: the row max (exact in the input dtype), then the sums of exps and the
    picked logits together. The fp32 temporaries are ``[chunk_rows, V_local]`` (`default_chunk_rows`).
    """
    n, v_local = logits.shape
    with torch.no_grad():
        if v_local:
            m = logits.amax(dim=-1).float()
        else:  # a rank holding no columns contributes -inf to the max and nothing to the sums
            m = torch.full((n,), float("-inf"), dtype=torch.float32, device=logits.device)
        all_reduce(m, dist.ReduceOp.MAX, group)
        stats = torch.zeros(1 if targets is None else 2, n, dtype=torch.float32, device=logits.device)
        if n and v_local:
            rows = default_chunk_rows(v_local, chunk_rows)
            work = torch.empty(min(rows, n), v_local, dtype=torch.float32, device=logits.device)
            for sl in row_chunks(n, rows):
                x = torch.sub(logits[sl], m[sl].unsqueeze(1), out=work[: sl.stop - sl.start])  # fp32 whatever the input
                stats[0, sl] = x.exp_().sum(dim=1)
            del work
        if targets is not None and v_local:
            local_t = targets - vocab_start(v_local, group)
            in_shard = (local_t >= 0) & (local_t < v_local)
            picked = logits.gather(1, local_t.clamp(0, v_local - 1).unsqueeze(1)).squeeze(1).float()
            stats[1] = torch.where(in_shard, picked, torch.zeros_like(picked))
        all_reduce(stats, dist.ReduceOp.SUM, group)
        return m + torch.log(stats[0]), (None if targets is None else stats[1])


# Logits per block in `head_logsumexp_and_target`: 2**20 elements (4 MiB of fp32) stay in the last-level cache
# between the matmul that writes a block and the passes that reduce it; a row count of at most 1024 keeps the
# matmul's M large enough to run near peak.
HEAD_BLOCK_ELEMENTS = 1 << 20
HEAD_BLOCK_MAX_ROWS = 1024


def head_logsumexp_and_target(hidden: torch.Tensor, weight: torch.Tensor, group: ProcessGroup,
                              targets: Optional[torch.Tensor] = None, block_rows: Optional[int] = None
                              ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """`logsumexp_and_target` of the logits ``hidden @ weight.T`` (``[n, h]`` by this rank's ``[V_local, h]``
    LM-head rows) without materialising them: fp32, no gradient, the same two all-reduces.

    The logits are computed a cache-sized block of ``block_rows`` rows by a slice of the vocabulary at a time;
    each block's logsumexp (from ATen's fused log-softmax, which reduces each row in cache) is folded into a
    running one per row, the online logsumexp. Each block's target logits are picked before it is reduced.
    Each block's matmul runs in the inputs' dtype, as ``(hidden @ weight.T)`` does.
    """
    n, v_local = hidden.shape[0], weight.shape[0]
    rows = min(n, block_rows or HEAD_BLOCK_MAX_ROWS) or 1
    cols = min(v_local, max(64, HEAD_BLOCK_ELEMENTS // rows)) or 1
    lse = torch.full((n,), float("-inf"), dtype=torch.float32, device=hidden.device)  # running, over the blocks
    stats = torch.zeros(1 if targets is None else 2, n, dtype=torch.float32, device=hidden.device)
    stats[0] = 1.0  # each rank's logsumexp is its (max, sum of exps) = (lse, 1)
    with torch.no_grad():
        block = torch.empty(rows * cols, dtype=hidden.dtype, device=hidden.device)  # a contiguous view per block
        for sl in row_chunks(n, rows):
            h, r = hidden[sl], sl.stop - sl.start
            local_t = None if targets is None else targets[sl] - vocab_start(v_local, group)
            lse_r = lse[sl]
            for c0 in range(0, v_local, cols):
                c1 = min(v_local, c0 + cols)
                z = torch.mm(h, weight[c0:c1].t(), out=block[: r * (c1 - c0)].view(r, c1 - c0))
                z = z if z.dtype == torch.float32 else z.float()
                if local_t is not None:
                    here = (local_t >= c0) & (local_t < c1)
                    picked = z.gather(1, (local_t - c0).clamp(0, c1 - c0 - 1).unsqueeze(1)).squeeze(1)
                    stats[1, sl] = torch.where(here, picked, stats[1, sl])
                # z[:, 0] - log_softmax(z)[:, 0] is the block's logsumexp; the kernel may write over its input
                first = z[:, 0].clone()
                torch.log_softmax(z, 1, out=z)
                torch.logaddexp(lse_r, first - z[:, 0], out=lse_r)
        del block
        if tp_size(group) > 1:  # rescale each rank's sums to the group's max before adding them
            local_lse = lse.clone()
            all_reduce(lse, dist.ReduceOp.MAX, group)
            stats[0].mul_((local_lse - lse).exp_())
            all_reduce(stats, dist.ReduceOp.SUM, group)
        return lse + torch.log(stats[0]), (None if targets is None else stats[1])

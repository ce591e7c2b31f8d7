"""Tensor-parallel vocabulary primitives (megatron-core layout: rank r holds ids [r*V_local, (r+1)*V_local)).

Row statistics (max, sum of exp, a picked logit) are all-reduced over the group, so the vocabulary is
never gathered. Shared by the teacher payloads and the losses; ``group=None`` means unsharded.
"""

from __future__ import annotations

from typing import Optional

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


def global_max(x: torch.Tensor, group: ProcessGroup) -> torch.Tensor:
    """Row max over the full (sharded) vocabulary; ``x`` is fp32 ``[c, V_local]``, result ``[c]``.

    A rank holding no columns contributes -inf. The result is detached: the max only stabilises exp.
    """
    if x.shape[-1] == 0:
        m = torch.full(x.shape[:-1], float("-inf"), dtype=torch.float32, device=x.device)
    else:
        m = x.detach().amax(dim=-1)
    return all_reduce(m, dist.ReduceOp.MAX, group)


def global_logsumexp(x: torch.Tensor, group: ProcessGroup) -> torch.Tensor:
    """Row logsumexp over the full vocabulary of fp32 ``[c, V_local]`` shards, without gradient."""
    with torch.no_grad():
        m = global_max(x, group)
        s = torch.exp(x - m.unsqueeze(-1)).sum(dim=-1)
        all_reduce(s, dist.ReduceOp.SUM, group)
        return m + torch.log(s)

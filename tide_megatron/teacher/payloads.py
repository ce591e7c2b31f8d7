"""Loss-sized teacher payloads from vocab-parallel LM-head inputs (§2, §9 pitfall 21).

Both payloads start from the final hidden states and this TP rank's LM-head rows W_r ([V/tp, h],
rows [r*V/tp, (r+1)*V/tp)), and compute logits a chunk of positions at a time in fp32, so neither
the full-vocabulary logits nor even this rank's [b, L, V/tp] slice is ever materialised whole:

(a) `token_logprobs`: log p(target) = z[target] - logsumexp(z), with the max, the sum of exps and the
    target logit each reduced across the TP group (Reverse CALM / CALM); the logits are reduced a
    cache-sized block at a time and never stored.
(b) `logit_row_shard` / `logit_rows`: logits at requested positions only, cut to the first `vocab_limit` ids
    (the shared vocabulary, §9 pitfall 1) (KL / TIDAL); the trainer exchanges the vocabulary slices so each
    rank receives only its own rows (`distributed.payload_exchange.vocab_shards_to_own_rows`).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist

from tide_megatron.distributed.vocab_parallel import head_logsumexp_and_target, local_vocab_limit, tp_size

# fp32 logits computed at once per TP rank (rows x V/tp): 2^25 = 128 MiB, e.g. 213 positions of LLaDA2's
# 157,184-id vocabulary at TP=1. Peak memory is a small multiple of this, independent of b x L.
LOGIT_CHUNK_ELEMENTS = 2 ** 25


def chunk_rows(v_local: int, chunk_elements: int = LOGIT_CHUNK_ELEMENTS) -> int:
    """How many positions to push through the LM head at once so one chunk holds ~chunk_elements logits."""
    return max(1, chunk_elements // max(1, v_local))


def token_logprobs(hidden: torch.Tensor, lm_head_weight: torch.Tensor, targets: torch.Tensor,
                   tp_group: Optional[dist.ProcessGroup] = None,
                   chunk_tokens: Optional[int] = None) -> torch.Tensor:
    """Payload (a): fp32 [b, L] log p(targets) from hidden [b, L, h] and this rank's LM-head rows.

    Targets < 0 (ignored positions) give 0. Collective over ``tp_group``: every rank passes the same
    hidden states and targets. ``chunk_tokens`` positions go through the LM head at a time (default: a
    cache-sized block, `distributed.vocab_parallel.head_logsumexp_and_target`); no logits are kept.
    """
    if targets.shape != hidden.shape[:2]:
        raise ValueError(f"targets shape {tuple(targets.shape)} must equal hidden states' [b, L] "
                         f"{tuple(hidden.shape[:2])}")
    flat_t = targets.reshape(-1)
    out = torch.zeros(flat_t.shape, dtype=torch.float32, device=hidden.device)
    # Only positions with a target go through the LM head (e.g. Pipeline A asks for active chunks only).
    # Every TP rank holds the same targets, so all ranks run the same number of collectives.
    wanted = (flat_t >= 0).nonzero().squeeze(1)
    rows_h = hidden.reshape(-1, hidden.shape[-1]).index_select(0, wanted)
    rows_t = flat_t.index_select(0, wanted)
    lse, picked = head_logsumexp_and_target(rows_h, lm_head_weight, tp_group, rows_t, chunk_tokens)
    out[wanted] = picked - lse
    return out.view(targets.shape)


def logit_row_shard(hidden_rows: torch.Tensor, lm_head_weight: torch.Tensor, vocab_limit: int,
                    tp_group: Optional[dist.ProcessGroup] = None) -> torch.Tensor:
    """This TP rank's slice of payload (b): fp32 ``[n, V/tp]`` logits at the given hidden rows ``[n, h]``, zero in
    the columns whose id is ``>= vocab_limit`` (without tensor parallelism: ``[n, vocab_limit]``).

    `distributed.payload_exchange.vocab_shards_to_own_rows` turns the slices into full rows of each rank's own
    positions (one all-to-all, the trainer's path); `logit_rows` gathers them for every rank.
    """
    size = tp_size(tp_group)
    v_local = lm_head_weight.shape[0]
    if not 0 < vocab_limit <= v_local * size:
        raise ValueError(f"vocab_limit={vocab_limit} must lie in (0, {v_local * size}] (the teacher vocabulary)")
    if size == 1:  # nothing to exchange: the rows themselves, cut to vocab_limit
        return (hidden_rows @ lm_head_weight[:vocab_limit].t()).float()
    keep = local_vocab_limit(v_local, vocab_limit, tp_group)
    shard = torch.empty(hidden_rows.shape[0], v_local, dtype=torch.float32, device=hidden_rows.device)
    shard[:, keep:] = 0
    w = lm_head_weight[:keep].t()
    if keep == v_local and hidden_rows.dtype == w.dtype == torch.float32:
        return torch.mm(hidden_rows, w, out=shard)  # written in place, no temporary
    step = chunk_rows(v_local)  # rows per matmul: its temporary is a fixed budget, not [n, V/tp]
    for s in range(0, hidden_rows.shape[0] if keep else 0, step):
        shard[s:s + step, :keep] = hidden_rows[s:s + step] @ w
    return shard


def logit_rows(hidden_rows: torch.Tensor, lm_head_weight: torch.Tensor, vocab_limit: int,
               tp_group: Optional[dist.ProcessGroup] = None) -> torch.Tensor:
    """Payload (b): fp32 [n, vocab_limit] logits at the given hidden rows [n, h] (gathered over TP), the same on
    every TP rank. Only the n requested rows are computed, and only ids below ``vocab_limit`` are kept."""
    size = tp_size(tp_group)
    shard = logit_row_shard(hidden_rows, lm_head_weight, vocab_limit, tp_group)
    if size == 1:
        return shard
    parts = [torch.empty_like(shard) for _ in range(size)]
    dist.all_gather(parts, shard, group=tp_group)
    return torch.cat(parts, dim=1)[:, :vocab_limit].contiguous()

"""BD3LM cross-entropy, present in every mode (spec §1.5, §9.9, §9.10).

``L_CE = (1/N_maskable) * sum_{b,i} m_{b,i} * w(t_b) * (-log softmax(z_{b,i})[x0_{b,i}])`` with
``w(t) = 1/(t + 1e-6)``. The denominator counts *maskable* tokens (label != -100), not masked ones.
"""

from __future__ import annotations

from typing import Optional

import torch

from tide_megatron.distributed.vocab_parallel import ProcessGroup
from tide_megatron.losses.vocab_parallel import token_logprobs

CE_WEIGHT_EPS = 1e-6


def bd3lm_weight(t: torch.Tensor) -> torch.Tensor:
    """``w(t) = -alpha'(t) / (1 - alpha(t) + 1e-6) = 1/(t + 1e-6)`` for the linear schedule, in fp32."""
    return 1.0 / (t.float() + CE_WEIGHT_EPS)


def bd3lm_ce(
    student_logits: torch.Tensor,
    x0: torch.Tensor,
    masked: torch.Tensor,
    maskable: torch.Tensor,
    t: torch.Tensor,
    tp_group: ProcessGroup = None,
    chunk_rows: Optional[int] = None,
) -> torch.Tensor:
    """BD3LM CE over one micro-batch; fp32 scalar.

    Args:
        student_logits: ``[b, L, V_local]`` xt-half logits (no shift), any dtype, possibly vocab-parallel.
        x0: int64 ``[b, L]`` clean ids (the target at its own position).
        masked: bool ``[b, L]`` positions masked in xt (chunk-expanded in Pipeline A).
        maskable: bool ``[b, L]`` positions with label != -100 (the normaliser).
        t: ``[b]`` diffusion time per sequence.
        tp_group: tensor-parallel group when the vocabulary is sharded.
    """
    b, L = x0.shape
    if student_logits.shape[:2] != (b, L):
        raise ValueError(f"bd3lm_ce: student_logits {tuple(student_logits.shape)} must be [b, L, V] with "
                         f"[b, L] = {tuple(x0.shape)} from x0")
    check_ce_inputs(masked, maskable, t, (b, L))
    return bd3lm_ce_from_logprobs(token_logprobs(student_logits, x0, tp_group, chunk_rows), masked, maskable, t)


def check_ce_inputs(masked: torch.Tensor, maskable: torch.Tensor, t: torch.Tensor, shape: tuple[int, int]) -> None:
    """``masked``/``maskable`` bool ``[b, L]`` and ``t`` ``[b]``, or a ValueError naming the field."""
    for name, tensor in (("masked", masked), ("maskable", maskable)):
        if tuple(tensor.shape) != tuple(shape) or tensor.dtype != torch.bool:
            raise ValueError(f"bd3lm_ce: {name} must be bool [b, L] = {tuple(shape)}, "
                             f"got {tensor.dtype} {tuple(tensor.shape)}")
    if tuple(t.shape) != (shape[0],):
        raise ValueError(f"bd3lm_ce: t must be [b] = [{shape[0]}], got {tuple(t.shape)}")


def bd3lm_ce_from_logprobs(
    token_logp: torch.Tensor, masked: torch.Tensor, maskable: torch.Tensor, t: torch.Tensor
) -> torch.Tensor:
    """BD3LM CE from precomputed fp32 ``log p(x0)`` ``[b, L]`` (shared with CALM's student side, §5.6)."""
    check_ce_inputs(masked, maskable, t, tuple(token_logp.shape))
    weighted = (-token_logp.float() * bd3lm_weight(t).unsqueeze(1)).masked_fill(~masked, 0.0)
    return weighted.sum() / max(1, int(maskable.sum()))

"""Shared pieces of the core-attention parity tests (SDPA, its banded CPU path, FlexAttention, TE): the
constructor arguments of a one-layer core attention, and one forward + backward."""

import torch
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.transformer_config import TransformerConfig


def core_attention_args(grid, heads: int, groups: int, head_dim: int, **config) -> dict:
    """What megatron's core-attention constructors take, for a one-layer self attention with GQA on ``grid``
    (``config``: further `TransformerConfig` fields, e.g. the dtype)."""
    cfg = TransformerConfig(num_layers=1, hidden_size=heads * head_dim, num_attention_heads=heads,
                            num_query_groups=groups, kv_channels=head_dim, attention_dropout=0.0, **config)
    return dict(config=cfg, layer_number=1, attn_mask_type=AttnMaskType.arbitrary, attention_type="self",
                pg_collection=grid.pgs)


def forward_backward(core, mask, qkv, weight: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``core(q, k, v, mask)`` on fresh leaf copies of ``qkv`` and the gradients of ``sum(out * weight)`` (weight
    cut to the rows the core answers): (out, dq, dk, dv)."""
    q, k, v = (t.detach().clone().requires_grad_() for t in qkv)
    out = core(q, k, v, mask)
    (out.float() * weight[:out.shape[0]]).sum().backward()
    return out.detach(), q.grad, k.grad, v.grad

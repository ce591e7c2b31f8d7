"""Transformer Engine core attention that follows the mask, never TE's unfused arbitrary-mask path (DESIGN §3).

- `KeyPaddingMask` (LLaDA2, §2.1): TE's fused attention with the ``padding`` mask type, or ``no_mask`` when
  the batch has no padding. TE's padding kernels assume the valid keys of a row are a prefix; other padding
  patterns go to FlexAttention.
- `BlockDiffusionMask` (student, WeDLM) and any explicit dense mask: FlexAttention with a block mask
  (models/flex_attention.py).

Imported only by the TE backend provider: importing it needs Transformer Engine.
"""

from __future__ import annotations

from typing import Optional, Union

import torch
from megatron.core.extensions.transformer_engine import TEDotProductAttention
from megatron.core.extensions.transformer_engine_spec_provider import TESpecProvider
from megatron.core.transformer.enums import AttnMaskType

from tide_megatron.models.attention_mask import AttentionMaskSpec, KeyPaddingMask
from tide_megatron.models.flex_attention import flex_core_attention


class MaskFollowingTEAttention(TEDotProductAttention):
    """`TEDotProductAttention` (same constructor, state-dict keys and TE settings) whose kernel follows the mask."""

    def __init__(self, config, layer_number: int, attn_mask_type: AttnMaskType, attention_type: str,
                 attention_dropout: Optional[float] = None, **kwargs):
        dropout = config.attention_dropout if attention_dropout is None else attention_dropout
        if dropout:
            raise ValueError(f"MaskFollowingTEAttention: FlexAttention (block-diffusion masks) has no attention "
                             f"dropout; got attention_dropout={dropout} (the Qwen3, WeDLM and LLaDA2 configs use 0)")
        super().__init__(config, layer_number, attn_mask_type, attention_type, attention_dropout, **kwargs)

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: Union[AttentionMaskSpec, torch.Tensor, None],
        attn_mask_type: Optional[AttnMaskType] = None,
        attention_bias: Optional[torch.Tensor] = None,
        packed_seq_params=None,
        num_splits: Optional[int] = None,
    ) -> torch.Tensor:
        if attention_mask is None or (isinstance(attention_mask, KeyPaddingMask) and attention_mask.right_padded):
            padding = None if attention_mask is None else attention_mask.te_padding_mask()
            mask_type = AttnMaskType.no_mask if padding is None else AttnMaskType.padding
            return super().forward(query, key, value, padding, mask_type, attention_bias=attention_bias,
                                   packed_seq_params=packed_seq_params, num_splits=num_splits)
        if packed_seq_params is not None or attention_bias is not None:
            raise ValueError("MaskFollowingTEAttention: packed sequences and attention_bias need TE's own masks; "
                             "block-diffusion and explicit masks run FlexAttention, which takes neither")
        scale = self.softmax_scale if getattr(self, "softmax_scale", None) else query.shape[-1] ** -0.5
        return flex_core_attention(query, key, value, attention_mask, scale)


class MaskFollowingTESpecProvider(TESpecProvider):
    """megatron's TE provider with core attention that follows the mask."""

    def core_attention(self) -> type:
        return MaskFollowingTEAttention

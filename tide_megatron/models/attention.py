"""Core attention from an explicit mask with torch SDPA: the CPU-capable counterpart of TE attention.

A drop-in for megatron-core's `DotProductAttention` / `TEDotProductAttention` (same constructor and
`forward(query, key, value, attention_mask, ...)`), so specs can swap it freely. It never builds a
causal mask: the caller's mask is the whole truth (spec §1.1, "attention is not causal"). A mask
description (models/attention_mask.py) is expanded to its dense mask here.
"""

from __future__ import annotations

import math
from typing import Optional, Union

import torch
import torch.nn.functional as F
from megatron.core import tensor_parallel
from megatron.core.process_groups_config import ProcessGroupCollection
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.transformer_config import TransformerConfig
from megatron.core.utils import divide

from tide_megatron.models.attention_mask import AttentionMaskSpec, KeyPaddingMask


def additive_mask(blocked: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Bool mask (True = blocked) -> additive float mask with a large *finite* negative (§9.17).

    A fully blocked query row then gets a uniform (finite) softmax instead of NaN; such rows are
    padding whose outputs the caller ignores.
    """
    return torch.zeros(blocked.shape, dtype=dtype, device=blocked.device).masked_fill(
        blocked, torch.finfo(dtype).min
    )


class SDPACoreAttention(MegatronModule):
    """softmax(q k^T * scale + mask) v with GQA, via `F.scaled_dot_product_attention`.

    Mask: a description (`AttentionMaskSpec`), or megatron-core's core-attention convention (bool, True =
    masked out, broadcastable to [b, heads, sq, sk]); models in this package convert their public masks once.
    Softmax precision is what SDPA gives (fp32 accumulation for fp32 inputs). With ``query_rows = n`` set (by
    `models.output_rows.OutputRowsTransformerLayer`, for one call) only the first n queries are answered.
    """

    query_rows: Optional[int] = None

    def __init__(
        self,
        config: TransformerConfig,
        layer_number: int,
        attn_mask_type: AttnMaskType,
        attention_type: str,
        attention_dropout: Optional[float] = None,
        softmax_scale: Optional[float] = None,
        cp_comm_type: Optional[str] = None,
        pg_collection: Optional[ProcessGroupCollection] = None,
    ):
        super().__init__(config=config)
        if config.context_parallel_size != 1:
            raise ValueError("SDPACoreAttention: context_parallel_size must be 1")
        if attn_mask_type not in (AttnMaskType.arbitrary, AttnMaskType.no_mask, AttnMaskType.padding):
            raise ValueError(f"SDPACoreAttention builds no mask itself; got attn_mask_type={attn_mask_type}, "
                             "expected arbitrary (an explicit mask)")
        if pg_collection is None:
            pg_collection = ProcessGroupCollection.use_mpu_process_groups(required_pgs=["tp"])
        self.tp_group = pg_collection.tp
        tp_size = pg_collection.tp.size()
        self.heads_per_partition = divide(config.num_attention_heads, tp_size)
        self.groups_per_partition = divide(config.num_query_groups, tp_size)
        self.head_dim = config.kv_channels
        self.softmax_scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(self.head_dim)
        self.dropout_p = config.attention_dropout if attention_dropout is None else attention_dropout

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: Union[AttentionMaskSpec, torch.Tensor, None],
        attn_mask_type: Optional[AttnMaskType] = None,
        attention_bias: Optional[torch.Tensor] = None,
        packed_seq_params=None,
    ) -> torch.Tensor:
        """query [sq, b, np, hn], key/value [sk, b, ng, hn] -> context [sq, b, np*hn]."""
        if packed_seq_params is not None or attention_bias is not None:
            raise ValueError("SDPACoreAttention supports neither packed sequences nor attention_bias")
        if isinstance(attention_mask, KeyPaddingMask) and not attention_mask.has_padding:
            attention_mask = None
        elif isinstance(attention_mask, AttentionMaskSpec):
            attention_mask.check(query.shape[1], query.shape[0])
            attention_mask = attention_mask.to(query.device).blocked()
        if self.query_rows is not None:
            query = query[:self.query_rows]
            if attention_mask is not None and attention_mask.shape[-2] > 1:
                attention_mask = attention_mask[..., :self.query_rows, :]
        q, k, v = (x.permute(1, 2, 0, 3) for x in (query, key, value))  # [b, heads, s, hn]
        mask = None
        if attention_mask is not None:
            mask = additive_mask(attention_mask.to(torch.bool), q.dtype)
        dropout_p = self.dropout_p if self.training else 0.0
        gqa = self.heads_per_partition != self.groups_per_partition
        if dropout_p > 0.0:
            with tensor_parallel.get_cuda_rng_tracker().fork():
                ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p,
                                                     scale=self.softmax_scale, enable_gqa=gqa)
        else:
            ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.softmax_scale,
                                                 enable_gqa=gqa)
        sq, b = query.shape[0], query.shape[1]
        return ctx.permute(2, 0, 1, 3).reshape(sq, b, self.heads_per_partition * self.head_dim)

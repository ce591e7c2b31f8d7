"""FlexAttention core attention: block-sparse attention from the mask's structure (DESIGN §3).

`FlexCoreAttention` is a drop-in for `SDPACoreAttention` / megatron's `DotProductAttention` (same
constructor and forward). The mask becomes a FlexAttention `BlockMask` built once per forward and shared by
every layer: from a `BlockDiffusionMask` / `KeyPaddingMask` (models/attention_mask.py) through their
``mask_mod``, or from an explicit dense mask by reading it. Tiles the mask blocks entirely are skipped, so
the [b, h, s, s] scores never exist on GPU (about 60-75% of the block-diffusion tiles are empty).

On CUDA the kernel is ``torch.compile(flex_attention)`` (Triton). On CPU, torch 2.13's public
``flex_attention`` refuses inputs that need gradients (its compiled CPU kernel has no backward), so CPU runs
the higher-order op it wraps eagerly: torch's unfused reference implementation, forward and backward. That
is what the CPU parity tests exercise; CPU training keeps SDPA with the explicit mask (benchmarks/attention.py).
"""

from __future__ import annotations

import math
import weakref
from typing import Optional, Union

import torch
from megatron.core.process_groups_config import ProcessGroupCollection
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.transformer_config import TransformerConfig
from megatron.core.utils import divide
from torch._higher_order_ops.flex_attention import flex_attention as flex_attention_op
from torch.nn.attention import flex_attention as flex

from tide_megatron.models.attention_mask import AttentionMaskSpec, KeyPaddingMask

CoreMask = Union[AttentionMaskSpec, torch.Tensor, None]

_compiled_flex = None
SPARSE_BLOCK = 128  # FlexAttention's tile: query rows x key columns per block of the BlockMask (its default)
MASK_BAND_ROWS = 1024  # query rows of a description's mask evaluated at once when building its BlockMask
# The last dense mask turned into a BlockMask: every layer of one forward gets the same tensor.
_dense_cache: tuple = (None, None, None)


def compiled_flex_attention():
    """``torch.compile(flex_attention)``, built once. Refuses to run with Dynamo disabled: the uncompiled
    function would silently materialise the full scores on GPU."""
    global _compiled_flex
    if torch._dynamo.config.disable:
        raise RuntimeError("FlexAttention on CUDA needs torch.compile, but TorchDynamo is disabled "
                           "(TORCHDYNAMO_DISABLE=1 in the environment?); unset it for GPU runs")
    if _compiled_flex is None:
        _compiled_flex = torch.compile(flex.flex_attention)
    return _compiled_flex


def block_mask_for(mask: CoreMask, batch: int, q_len: int, kv_len: int,
                   device: torch.device) -> Optional[flex.BlockMask]:
    """The FlexAttention `BlockMask` of ``mask`` (None = attend everywhere); cached per mask object.

    A dense tensor is megatron's convention (bool, True = masked out, [b or 1, 1, sq, sk]).
    """
    global _dense_cache
    if mask is None or (isinstance(mask, KeyPaddingMask) and not mask.has_padding):
        return None
    if isinstance(mask, AttentionMaskSpec):
        mask.check(batch, q_len)
        key = (str(device), q_len, kv_len)
        if key not in mask._cache:
            mask._cache[key] = description_block_mask(mask.to(device), q_len, kv_len)
        return mask._cache[key]
    if mask.dtype != torch.bool or mask.dim() != 4 or mask.shape[-2:] != (q_len, kv_len):
        raise ValueError(f"a dense attention mask must be bool [b, 1, {q_len}, {kv_len}] (True = masked out), "
                         f"got {mask.dtype} {tuple(mask.shape)}")
    ref, version, cached = _dense_cache
    if ref is not None and ref() is mask and version == mask._version:
        return cached
    shared = mask.shape[0] == 1 or mask.stride(0) == 0  # one mask for the whole batch (an expanded view)
    allowed = ~(mask[:1] if shared else mask)[:, 0].to(device)

    def mask_mod(b, h, q_idx, kv_idx):
        return allowed[0 if shared else b, q_idx, kv_idx]

    block_mask = flex.create_block_mask(mask_mod, None if shared else mask.shape[0], None, q_len, kv_len,
                                        device=device)
    _dense_cache = (weakref.ref(mask), mask._version, block_mask)
    return block_mask


def description_block_mask(spec: AttentionMaskSpec, q_len: int, kv_len: int,
                           band_rows: Optional[int] = None) -> flex.BlockMask:
    """The `BlockMask` of a mask description, ``flex.create_block_mask``'s result without its dense grid.

    Uncompiled, ``create_block_mask`` evaluates the mask at every (query, key) pair at once, a [b, S, S] bool;
    here the tiles are classified (partial / full) a band of ``band_rows`` query rows at a time, so only
    [b, band, S] exists, and the BlockMask keeps the description's ``mask_mod`` for the partial tiles.
    """
    band_rows = MASK_BAND_ROWS if band_rows is None else band_rows
    band = max(SPARSE_BLOCK, band_rows // SPARSE_BLOCK * SPARSE_BLOCK)
    partial, full = [], []
    for start in range(0, q_len, band):
        rows = spec.allowed_rows(start, min(q_len, start + band))[:, None]
        p, f = flex._convert_mask_to_block_mask(rows, SPARSE_BLOCK, SPARSE_BLOCK, separate_full_blocks=True)
        partial.append(p)
        full.append(f)
    return flex._create_sparse_block_from_block_mask((torch.cat(partial, 2), torch.cat(full, 2)), spec.mask_mod(),
                                                     (q_len, kv_len), SPARSE_BLOCK, SPARSE_BLOCK)


def flex_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_mask: Optional[flex.BlockMask],
                   scale: float) -> torch.Tensor:
    """q [b, np, s, hn], k/v [b, ng, s, hn] (GQA when ng < np) -> [b, np, s, hn]."""
    gqa = q.shape[1] != k.shape[1]
    if q.is_cuda:
        return compiled_flex_attention()(q, k, v, block_mask=block_mask, scale=scale, enable_gqa=gqa)
    # CPU: the op under the public API, run eagerly (see the module docstring).
    if block_mask is None:
        block_mask = flex._create_empty_block_mask(q, k)
    options = flex._apply_kernel_options(q, k, v, False, None, None)
    out, _, _ = flex_attention_op(q, k, v, flex._identity, block_mask.as_tuple(), scale, options)
    return out


def flex_core_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: CoreMask,
                        scale: float) -> torch.Tensor:
    """megatron layout: query [sq, b, np, hn], key/value [sk, b, ng, hn] -> context [sq, b, np*hn]."""
    sq, b, heads, head_dim = query.shape
    q, k, v = (x.permute(1, 2, 0, 3) for x in (query, key, value))
    ctx = flex_attention(q, k, v, block_mask_for(mask, b, sq, key.shape[0], query.device), scale)
    return ctx.permute(2, 0, 1, 3).reshape(sq, b, heads * head_dim)


class FlexCoreAttention(MegatronModule):
    """softmax(q k^T * scale) v over the tiles the mask allows, with GQA, via FlexAttention.

    Takes the mask as a description (models/attention_mask.py) or an explicit bool mask (True = masked out).
    Rows with no allowed key give 0 (SDPA's finite-min path gives a uniform average); callers ignore them.
    """

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
            raise ValueError("FlexCoreAttention: context_parallel_size must be 1")
        dropout = config.attention_dropout if attention_dropout is None else attention_dropout
        if dropout:
            raise ValueError(f"FlexCoreAttention has no attention dropout; got attention_dropout={dropout} "
                             "(the Qwen3, WeDLM and LLaDA2 configs use 0)")
        if pg_collection is None:
            pg_collection = ProcessGroupCollection.use_mpu_process_groups(required_pgs=["tp"])
        tp_size = pg_collection.tp.size()
        self.heads_per_partition = divide(config.num_attention_heads, tp_size)
        self.groups_per_partition = divide(config.num_query_groups, tp_size)
        self.head_dim = config.kv_channels
        self.softmax_scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(self.head_dim)

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: CoreMask,
        attn_mask_type: Optional[AttnMaskType] = None,
        attention_bias: Optional[torch.Tensor] = None,
        packed_seq_params=None,
    ) -> torch.Tensor:
        """query [sq, b, np, hn], key/value [sk, b, ng, hn] -> context [sq, b, np*hn]."""
        if packed_seq_params is not None or attention_bias is not None:
            raise ValueError("FlexCoreAttention supports neither packed sequences nor attention_bias")
        if query.shape[2] != self.heads_per_partition or key.shape[2] != self.groups_per_partition:
            raise ValueError(f"FlexCoreAttention: expected {self.heads_per_partition} query heads and "
                             f"{self.groups_per_partition} key/value groups per partition, got "
                             f"{query.shape[2]} and {key.shape[2]}")
        return flex_core_attention(query, key, value, attention_mask, self.softmax_scale)

"""Core attention from an explicit mask with torch SDPA: the CPU-capable counterpart of TE attention.

A drop-in for megatron-core's `DotProductAttention` / `TEDotProductAttention` (same constructor and
`forward(query, key, value, attention_mask, ...)`), so specs can swap it freely. It never builds a
causal mask: the caller's mask is the whole truth (spec §1.1, "attention is not causal"). A mask
description (models/attention_mask.py) is expanded to its dense mask here.

On CPU, a sparse description (the block-diffusion masks: about a third of the tiles of ``[xt ; x0]`` are live)
is attended a band of query rows at a time, each band to the key tiles any of its rows may see
(`tile_bands`): the same softmax over the same keys, without the work on the tiles no query sees. On GPU the
FlexAttention and TE core attentions take these masks instead (models/flex_attention.py, te_attention.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
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


#: Query rows per band and key columns per tile of the CPU banded path, and the live-tile fraction above which
#: one dense call is kept (on 2 CPU cores one attention layer's forward + backward took 0.5-0.7x the dense time
#: with a third to 0.44 of the tiles live; the training step's effect: benchmarks/train_throughput.py --scaling).
BAND_ROWS, TILE_COLS, DENSE_ABOVE = 64, 32, 0.6


@dataclass
class TileBands:
    """Query bands ``[start, stop)``, the key columns each attends (whole tiles) and its slice of the mask."""

    bounds: list[tuple[int, int]]
    columns: list[torch.Tensor]  # int64 [n_cols] per band
    blocked: list[torch.Tensor]  # bool [b, 1, stop - start, n_cols] per band, True = masked out
    live_fraction: float
    _additive: dict = field(default_factory=dict, repr=False)
    _all_columns: Optional[torch.Tensor] = field(default=None, repr=False)

    @property
    def all_columns(self) -> torch.Tensor:
        """Every band's key columns, one band after the other: one gather serves all bands (and one scatter-add
        its backward, instead of a zeroed full-size gradient per band)."""
        if self._all_columns is None:
            self._all_columns = torch.cat(self.columns)
        return self._all_columns

    def additive(self, dtype: torch.dtype) -> list[torch.Tensor]:
        """Each band's additive mask in ``dtype`` (built once: every layer and the backward reuse them)."""
        if dtype not in self._additive:
            self._additive[dtype] = [additive_mask(m, dtype) for m in self.blocked]
        return self._additive[dtype]


def tile_bands(blocked: torch.Tensor, band_rows: int = BAND_ROWS, tile_cols: int = TILE_COLS,
               dense_above: float = DENSE_ABOVE) -> Optional[TileBands]:
    """The banded plan of a bool mask ``[b, 1, sq, sk]`` (True = masked out), or None when one dense call is as
    cheap (more than ``dense_above`` of the tiles live) or a query row sees no key (the dense path gives such
    padding rows a uniform softmax; a band could not)."""
    b, _, sq, sk = blocked.shape
    allowed = ~blocked[:, 0]
    if not bool(allowed.any(-1).all()):
        return None
    nq, nk = -(-sq // band_rows), -(-sk // tile_cols)
    padded = F.pad(allowed, (0, nk * tile_cols - sk, 0, nq * band_rows - sq))
    live = padded.view(b, nq, band_rows, nk, tile_cols).any(4).any(2).any(0)  # [nq, nk]: any query sees the tile
    fraction = float(live.float().mean())
    if fraction > dense_above:
        return None
    tiles = torch.arange(nk * tile_cols, device=blocked.device).view(nk, tile_cols)
    bounds, columns, masks = [], [], []
    for i in range(nq):
        start, stop = i * band_rows, min(sq, (i + 1) * band_rows)
        cols = tiles[live[i]].reshape(-1)
        cols = cols[cols < sk]
        bounds.append((start, stop))
        columns.append(cols)
        masks.append(blocked[:, :, start:stop].index_select(3, cols))
    return TileBands(bounds, columns, masks, fraction)


class SDPACoreAttention(MegatronModule):
    """softmax(q k^T * scale + mask) v with GQA, via `F.scaled_dot_product_attention`.

    Mask: a description (`AttentionMaskSpec`), or megatron-core's core-attention convention (bool, True =
    masked out, broadcastable to [b, heads, sq, sk]); models in this package convert their public masks once.
    Softmax precision is what SDPA gives (fp32 accumulation for fp32 inputs). With ``query_rows = n`` set (by
    `models.output_rows.OutputRowsTransformerLayer`, for one call) only the first n queries are answered.
    """

    query_rows: Optional[int] = None
    band_rows, tile_cols = BAND_ROWS, TILE_COLS  # the CPU banded path (tile_bands)

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
        spec = None
        if isinstance(attention_mask, KeyPaddingMask) and not attention_mask.has_padding:
            attention_mask = None
        elif isinstance(attention_mask, AttentionMaskSpec):
            attention_mask.check(query.shape[1], query.shape[0])
            spec = attention_mask.to(query.device)
            attention_mask = spec.blocked()
        if self.query_rows is not None:
            query = query[:self.query_rows]
            if attention_mask is not None and attention_mask.shape[-2] > 1:
                attention_mask = attention_mask[..., :self.query_rows, :]
        q, k, v = (x.permute(1, 2, 0, 3) for x in (query, key, value))  # [b, heads, s, hn]
        dropout_p = self.dropout_p if self.training else 0.0
        gqa = self.heads_per_partition != self.groups_per_partition
        bands = self._bands(spec, attention_mask) if dropout_p == 0.0 and query.device.type == "cpu" else None
        sq, b = query.shape[0], query.shape[1]
        if bands is not None:
            # split (not slices or per-band gathers): autograd then joins the bands' gradients with one cat each
            widths = [len(cols) for cols in bands.columns]
            k_bands = k.index_select(2, bands.all_columns).split(widths, dim=2)
            v_bands = v.index_select(2, bands.all_columns).split(widths, dim=2)
            q_bands = q.split([stop - start for start, stop in bands.bounds], dim=2)
            ctx = torch.cat([F.scaled_dot_product_attention(qb, kb, vb, attn_mask=mask, scale=self.softmax_scale,
                                                            enable_gqa=gqa)
                             for qb, kb, vb, mask in zip(q_bands, k_bands, v_bands, bands.additive(q.dtype))], dim=2)
            return ctx.permute(2, 0, 1, 3).reshape(sq, b, self.heads_per_partition * self.head_dim)
        mask = None
        if attention_mask is not None:
            mask = additive_mask(attention_mask.to(torch.bool), q.dtype)
        if dropout_p > 0.0:
            with tensor_parallel.get_cuda_rng_tracker().fork():
                ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p,
                                                     scale=self.softmax_scale, enable_gqa=gqa)
        else:
            ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.softmax_scale,
                                                 enable_gqa=gqa)
        return ctx.permute(2, 0, 1, 3).reshape(sq, b, self.heads_per_partition * self.head_dim)

    def _bands(self, spec: Optional[AttentionMaskSpec], blocked: Optional[torch.Tensor]) -> Optional[TileBands]:
        """The banded plan of a mask description (None: attend densely), built once per description and query
        row count: every layer and the backward of a forward share it."""
        if spec is None or blocked is None:
            return None
        key = ("tile_bands", blocked.shape[-2], self.band_rows, self.tile_cols)
        if key not in spec._cache:
            spec._cache[key] = tile_bands(blocked, self.band_rows, self.tile_cols)
        return spec._cache[key]

"""Block-diffusion attention mask over [xt ; x0] or [x0 ; xt] (spec §1.4, test vectors §11.4).

Packed sequences that keep only some blocks of each half (the student and teacher compaction) describe their
mask as a `models.attention_mask.BlockDiffusionMask` (per-token segment and original block ids).
"""

from __future__ import annotations

from typing import Literal

import torch

Order = Literal["xt_x0", "x0_xt"]


def check_block_multiple(seq_len: int, block_size: int, seq_flag: str = "--seq-length",
                         block_flag: str = "--block-size") -> None:
    """Sequence length must be a positive multiple of the block size (§9.6)."""
    if block_size < 1 or seq_len < 1 or seq_len % block_size:
        raise ValueError(f"{seq_flag} {seq_len} must be a positive multiple of {block_flag} {block_size}")


def block_diffusion_mask(L: int, block_size: int, order: Order = "xt_x0",
                         device: torch.device | str | None = None) -> torch.Tensor:
    """bool[2L, 2L], True = query row may attend to key column.

    Allowed iff same segment and same block (M_BD), or xt query -> x0 key of an earlier block (M_OBC),
    or x0 query -> x0 key of the same or an earlier block (M_BC). `blk` is the offset inside the half
    divided by `block_size`; `order` says which half comes first.
    """
    check_block_multiple(L, block_size, "L", "block_size")
    if order not in ("xt_x0", "x0_xt"):
        raise ValueError(f"order must be 'xt_x0' or 'x0_xt', got {order!r}")
    idx = torch.arange(2 * L, device=device)
    first_half = idx < L
    is_x0 = ~first_half if order == "xt_x0" else first_half
    blk = (idx % L) // block_size
    q_x0, k_x0 = is_x0[:, None], is_x0[None, :]
    q_blk, k_blk = blk[:, None], blk[None, :]
    block_diagonal = (q_x0 == k_x0) & (q_blk == k_blk)
    offset_block_causal = ~q_x0 & k_x0 & (k_blk < q_blk)
    block_causal = q_x0 & k_x0 & (k_blk <= q_blk)
    return block_diagonal | offset_block_causal | block_causal


def block_causal_mask(L: int, block_size: int, device: torch.device | str | None = None) -> torch.Tensor:
    """bool[L, L]: key block <= query block (the sampler's prefix encoding, §7)."""
    check_block_multiple(L, block_size, "L", "block_size")
    blk = torch.arange(L, device=device) // block_size
    return blk[None, :] <= blk[:, None]

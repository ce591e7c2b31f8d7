"""The [xt ; x0] student input with duplicated RoPE positions (spec §1.4, pitfall 5)."""

from __future__ import annotations

import torch

from tide_megatron.diffusion.masks import Order


def bd3lm_inputs(xt: torch.Tensor, x0: torch.Tensor, order: Order = "xt_x0") -> tuple[torch.Tensor, torch.Tensor]:
    """xt, x0 [b, L] -> (ids [b, 2L], position_ids [b, 2L] = [0..L-1, 0..L-1])."""
    if xt.shape != x0.shape or xt.dim() != 2:
        raise ValueError(f"xt and x0 must both be [b, L]; got {tuple(xt.shape)} and {tuple(x0.shape)}")
    b, L = x0.shape
    ids = torch.cat([xt, x0] if order == "xt_x0" else [x0, xt], dim=1)
    pos = torch.arange(L, device=x0.device, dtype=torch.long).repeat(2).unsqueeze(0).expand(b, 2 * L)
    return ids, pos.contiguous()

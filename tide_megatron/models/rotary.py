"""RoPE gathered at explicit position ids (spec §1.4, pitfall 5).

megatron-core's GPTModel builds rotary frequencies for positions 0..s-1 whatever `position_ids` say;
the [xt ; x0] input needs positions [0..L-1, 0..L-1], so frequencies are computed per position id.
"""

from __future__ import annotations

import torch


class ExplicitPositionRotaryEmbedding(torch.nn.Module):
    """Frequencies `pos * theta^(-2i/d)` for each given position, d = kv_channels * rotary_percent.

    Output layout is what megatron's `apply_rotary_pos_emb` expects, with the batch kept:
    `[s, b, 1, d]` (non-interleaved: the two halves repeat, as HF's `rotate_half`).
    """

    def __init__(self, kv_channels: int, rotary_base: float, rotary_percent: float = 1.0,
                 rotary_interleaved: bool = False):
        super().__init__()
        dim = int(kv_channels * rotary_percent)
        if dim <= 0 or dim % 2:
            raise ValueError(f"rotary dimension kv_channels*rotary_percent = {kv_channels}*{rotary_percent} "
                             "must be a positive even number")
        self.dim = dim
        self.rotary_interleaved = rotary_interleaved
        inv_freq = 1.0 / (float(rotary_base) ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, position_ids: torch.Tensor) -> torch.Tensor:
        """position_ids [b, s] (int) -> freqs [s, b, 1, d] (fp32)."""
        if position_ids.dim() != 2:
            raise ValueError(f"position_ids must be [batch, seq], got shape {tuple(position_ids.shape)}")
        inv_freq = self.inv_freq.to(position_ids.device)
        freqs = position_ids.t().to(torch.float32).unsqueeze(-1) * inv_freq  # [s, b, d/2]
        if self.rotary_interleaved:
            emb = torch.stack((freqs, freqs), dim=-1).flatten(-2)
        else:
            emb = torch.cat((freqs, freqs), dim=-1)
        return emb.unsqueeze(2)

"""Explicit-position RoPE against a plain PyTorch reference, including LLaDA2's partial rotary (0.5)."""

import pytest
import torch
from megatron.core.models.common.embeddings.rope_utils import _apply_rotary_pos_emb_bshd

from tide_megatron.models.rotary import ExplicitPositionRotaryEmbedding


def _reference(x, pos, theta, fraction):
    """HF-style RoPE on [b, h, s, d]: rotate_half on the first d*fraction dims, pass the rest through."""
    d = int(x.shape[-1] * fraction)
    inv_freq = 1.0 / theta ** (torch.arange(0, d, 2, dtype=torch.float32) / d)
    ang = pos[:, None, :, None].float() * inv_freq  # [b, 1, s, d/2]
    cos, sin = torch.cat([ang.cos()] * 2, -1), torch.cat([ang.sin()] * 2, -1)
    rot, rest = x[..., :d], x[..., d:]
    half = torch.cat([-rot[..., d // 2:], rot[..., : d // 2]], -1)
    return torch.cat([rot * cos + half * sin, rest], -1)


@pytest.mark.parametrize("fraction,theta", [(1.0, 1e6), (0.5, 600000.0)])
def test_rope_matches_reference_at_duplicated_positions(fraction, theta):
    b, h, L, d = 2, 3, 6, 16
    pos = torch.arange(L).repeat(2).expand(b, 2 * L)  # [0..L-1, 0..L-1]
    x = torch.randn(b, h, 2 * L, d, generator=torch.Generator().manual_seed(0))
    freqs = ExplicitPositionRotaryEmbedding(d, theta, rotary_percent=fraction)(pos)
    assert freqs.shape == (2 * L, b, 1, int(d * fraction))
    ours = _apply_rotary_pos_emb_bshd(x.permute(2, 0, 1, 3), freqs).permute(1, 2, 0, 3)
    torch.testing.assert_close(ours, _reference(x, pos, theta, fraction), atol=1e-5, rtol=1e-5)
    # The two halves share positions, so equal inputs rotate equally.
    y = x.clone()
    y[:, :, L:] = y[:, :, :L]
    out = _apply_rotary_pos_emb_bshd(y.permute(2, 0, 1, 3), freqs).permute(1, 2, 0, 3)
    torch.testing.assert_close(out[:, :, L:], out[:, :, :L], atol=0, rtol=0)


def test_rope_rejects_bad_shapes():
    with pytest.raises(ValueError, match="even"):
        ExplicitPositionRotaryEmbedding(10, 1e4, rotary_percent=0.5)
    with pytest.raises(ValueError, match="position_ids"):
        ExplicitPositionRotaryEmbedding(8, 1e4)(torch.arange(4))

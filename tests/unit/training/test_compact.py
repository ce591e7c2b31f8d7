"""Leaving out unmasked student blocks keeps every attention set of the kept tokens (spec §1.4, §11.4)."""

import torch

from tide_megatron.diffusion.masks import block_diffusion_mask
from tide_megatron.training.compact import compact_student_inputs, scatter_xt_rows


def _attention(q, k, v, allowed):
    scores = (q @ k.transpose(-1, -2)).masked_fill(~allowed, float("-inf"))
    return torch.softmax(scores, -1) @ v


def test_kept_xt_rows_see_exactly_the_keys_of_the_full_input():
    torch.manual_seed(0)
    b, L, B, h = 3, 16, 4, 8
    x0 = torch.randint(0, 50, (b, L))
    masked = torch.zeros(b, L, dtype=torch.bool)
    masked[0, 5] = masked[0, 13] = True  # blocks 1 and 3
    masked[1, 2] = True  # block 0 only: no x0 needed
    # sequence 2 has nothing masked: no rows at all
    xt = torch.where(masked, 99, x0)
    c = compact_student_inputs(xt, x0, masked, B, pad_id=98)
    assert c.xt_rows == 2 * B and c.ids.shape[1] == 2 * B + 3 * B  # seq 0: x0 blocks 0..2
    assert c.xt_positions[0].tolist() == list(range(4, 8)) + list(range(12, 16))
    assert c.xt_positions[1].tolist()[:B] == list(range(4)) and (c.xt_positions[2] < 0).all()

    # A one-layer attention whose q/k/v depend on (id, position): compacted == full on every kept xt row.
    emb = torch.randn(100, h)
    pe = torch.randn(L, h)
    full_ids = torch.cat([xt, x0], 1)
    full_pos = torch.arange(L).repeat(2)
    full = _attention(*(emb[full_ids] + pe[full_pos],) * 3, block_diffusion_mask(L, B, "xt_x0"))
    x = emb[c.ids] + pe[c.position_ids]
    comp = _attention(x, x, x, c.mask.dense_allowed()[:, 0])
    hidden = scatter_xt_rows(comp[:, : c.xt_rows], c.xt_positions, L)
    keep = masked.view(b, L // B, B).any(-1).repeat_interleave(B, 1)
    torch.testing.assert_close(hidden[keep], full[:, :L][keep])
    assert torch.isfinite(comp).all()  # padding rows see themselves: no NaN anywhere
    assert (hidden[~keep] == 0).all()

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
    comp = _attention(x, x, x, c.mask[:, 0])
    hidden = scatter_xt_rows(comp[:, : c.xt_rows], c.xt_positions, L)
    keep = masked.view(b, L // B, B).any(-1).repeat_interleave(B, 1)
    torch.testing.assert_close(hidden[keep], full[:, :L][keep])
    assert torch.isfinite(comp).all()  # padding rows see themselves: no NaN anywhere
    assert (hidden[~keep] == 0).all()


def test_teacher_passes_in_one_compacted_sequence_keep_their_own_two_half_masks():
    """[x0 ; xt_1 ; xt_2] with every xt block needed: each pass sees exactly spec §11.4's [x0 ; xt] mask
    (restricted to the kept x0 blocks: the last x0 block precedes no xt block and is dropped)."""
    from tide_megatron.training.compact import compact_teacher_inputs, segment_block_mask

    L, B, P = 8, 4, 2
    x0 = torch.arange(L)[None]
    xts = torch.stack([x0 + 100, x0 + 200])
    c = compact_teacher_inputs(x0, xts, torch.ones(P, 1, L // B, dtype=torch.bool), B, pad_id=-1)
    mask = segment_block_mask(c.segment, c.block)[0]
    two = block_diffusion_mask(L, B, "x0_xt")
    seg, pos = c.segment[0], c.position_ids[0]
    x0_cols = (seg == 0).nonzero().flatten()
    assert pos[x0_cols].tolist() == list(range(L - B))
    for p in (1, 2):
        cols = torch.cat([x0_cols, (seg == p).nonzero().flatten()])
        full = torch.cat([pos[x0_cols], L + pos[seg == p]])  # the same tokens in the two-half layout
        assert torch.equal(mask[cols][:, cols], two[full][:, full])
    assert not mask[seg == 1][:, seg == 2].any() and not mask[seg == 2][:, seg == 1].any()
    assert c.index[1, 0].tolist() == (seg == 2).nonzero().flatten().tolist()


def test_teacher_compaction_drops_blocks_without_rows_and_the_x0_tail():
    from tide_megatron.training.compact import compact_teacher_inputs, segment_block_mask

    L, B = 16, 4
    x0 = torch.arange(L)[None]
    xts = torch.stack([x0 + 100, x0 + 200])
    need = torch.zeros(2, 1, L // B, dtype=torch.bool)
    need[0, 0, 2] = True  # pass 1 needs block 2 only; pass 2 needs nothing
    c = compact_teacher_inputs(x0, xts, need, B, pad_id=-1)
    assert c.ids[0].tolist() == list(range(8)) + list(range(108, 112))  # x0 blocks 0-1, xt_1 block 2
    assert (c.index[1] < 0).all() and c.index[0, 0, 8:12].tolist() == [8, 9, 10, 11]
    mask = segment_block_mask(c.segment, c.block)[0]
    assert mask[8:12, :8].all() and mask[8:12, 8:12].all()  # xt block 2: x0 blocks 0-1 and itself

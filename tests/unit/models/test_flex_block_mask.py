"""The BlockMask of a mask description, built a band of query rows at a time (no [b, S, S] grid), equals
FlexAttention's own ``create_block_mask`` over the description's ``mask_mod``, tile by tile."""

import pytest
import torch
from torch.nn.attention import flex_attention as flex

from tide_megatron.models import flex_attention as fa
from tide_megatron.models.attention_mask import BlockDiffusionMask, KeyPaddingMask
from tide_megatron.teacher.passes import compact_teacher_inputs
from tide_megatron.training.compact import compact_student_inputs


def _masks():
    g = torch.Generator().manual_seed(3)
    b, L, B = 3, 160, 16  # 320 and compacted lengths: not multiples of the 128-row tile
    x0 = torch.randint(0, 50, (b, L), generator=g)
    masked = torch.rand(b, L, generator=g) < 0.1
    student = compact_student_inputs(torch.where(masked, 51, x0), x0, masked, B, pad_id=0).mask
    need = torch.rand(2, b, L // B, generator=g) < 0.3
    c = compact_teacher_inputs(x0, torch.stack([x0, x0]), need, B, pad_id=0)
    teacher = BlockDiffusionMask(c.segment, c.block, (c.segment >= 0) & (torch.rand(c.segment.shape, generator=g) < 0.9))
    valid = torch.arange(300)[None] < torch.tensor([[300], [250], [17]])
    return {"xt_x0": BlockDiffusionMask.halves(b, L, B, "xt_x0"), "x0_xt": BlockDiffusionMask.halves(b, L, B, "x0_xt"),
            "compacted_student": student, "compacted_teacher_passes": teacher, "key_padding": KeyPaddingMask(valid)}


@pytest.mark.parametrize("name", list(_masks()))
@pytest.mark.parametrize("band_rows", [128, 256, 4096])
def test_equals_create_block_mask(name, band_rows):
    spec = _masks()[name]
    S = spec.seq_len
    ours = fa.description_block_mask(spec, S, S, band_rows=band_rows)
    theirs = flex.create_block_mask(spec.mask_mod(), spec.batch, None, S, S, device="cpu")
    for field in ("kv_num_blocks", "kv_indices", "full_kv_num_blocks", "full_kv_indices", "q_num_blocks",
                  "q_indices", "full_q_num_blocks", "full_q_indices"):
        a, b = getattr(ours, field), getattr(theirs, field)
        assert (a is None) == (b is None), field
        if a is not None:
            assert torch.equal(a, b), field
    assert torch.equal(ours.to_dense(), theirs.to_dense())


def test_only_a_band_of_rows_is_ever_expanded(monkeypatch):
    """The dense [b, S, S] mask is never built: every expansion covers at most one band of query rows."""
    spec = _masks()["xt_x0"]
    seen = []
    real = BlockDiffusionMask.allowed_rows
    monkeypatch.setattr(BlockDiffusionMask, "allowed_rows", lambda self, a, b: seen.append(b - a) or real(self, a, b))
    monkeypatch.setattr(BlockDiffusionMask, "dense_allowed", lambda self: pytest.fail("dense mask built"))
    monkeypatch.setattr(fa, "MASK_BAND_ROWS", 128)
    fa.block_mask_for(spec, spec.batch, spec.seq_len, spec.seq_len, torch.device("cpu"))
    assert seen == [128, 128, 64]  # S = 320

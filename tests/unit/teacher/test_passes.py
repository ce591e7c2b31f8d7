"""Teacher passes built from a noised micro-batch alone (spec §2.1-2.2, §4, §9.1): ids with the teacher's own
mask id in every pass, the tokens / rows the losses read, and the compacted [x0 ; xt_1 ; xt_2] sequence."""

import pytest
import torch

from tide_megatron.align.rows import aligned_rows
from tide_megatron.data.batch import DistillBatch
from tide_megatron.data.stage import StageConfig, TideCollator
from tide_megatron.diffusion.masks import block_diffusion_mask
from tide_megatron.models.attention_mask import BlockDiffusionMask
from tide_megatron.teacher.passes import (build_teacher_passes, checkpoint_mask_id, compact_teacher_inputs,
                                          needed_teacher_tokens, teacher_mask_id)
from tests.unit.data.test_pitfalls_stage import EOS, PAD, STUDENT_MASK, WEDLM_MASK, _samples

BLOCK = 32


def _pair_batch(compdemo: bool = True) -> DistillBatch:
    cfg = StageConfig(student_mask_id=STUDENT_MASK, student_eos_id=EOS, student_pad_id=PAD, teacher_eos_id=EOS,
                      teacher_pad_id=PAD, align="pairs", student_len=64, block_size=BLOCK,
                      compdemo_ratio=0.5 if compdemo else None)
    return DistillBatch.from_stage(TideCollator(cfg, seed=5)(_samples(6)))


def test_pipeline_b_passes_carry_only_the_teachers_mask_id_where_each_pass_is_masked():
    """§9.1: Pipeline B's student (151669) and WeDLM (151665) share a vocabulary but not the mask id; every
    column of the compacted teacher sequence holds the clean id (x0) or, in pass p's xt half, the teacher's
    mask exactly where pass p masks the teacher (§4: pass 1 = M_B, pass 2 = M_A)."""
    batch = _pair_batch()
    assert batch.num_passes == 2 and batch.take_pass2.any()
    passes = build_teacher_passes(batch, WEDLM_MASK, PAD, BLOCK, vocab_limit=PAD)
    ids, seg, pos = passes.inputs["ids"], passes.inputs["seg"], passes.inputs["pos"]
    assert not (ids == STUDENT_MASK).any() and (ids == WEDLM_MASK).any()
    for k in range(ids.shape[0]):
        for col in range(ids.shape[1]):
            s, i = int(seg[k, col]), int(pos[k, col])
            if s < 0:
                assert ids[k, col] == PAD
            elif s == 0:
                assert ids[k, col] == batch.teacher_ids[k, i]
            else:
                masked = bool(batch.teacher_pass_masks[s - 1, k, i])
                assert ids[k, col] == (WEDLM_MASK if masked else batch.teacher_ids[k, i])
    # One requested row per distilled position K, in the pass where the position is masked (§2.4, §4.4).
    rows = aligned_rows(batch.masked, batch.pair_student, batch.pair_teacher, batch.pair_valid)
    assert passes.rows.shape == (len(rows), 2) and torch.equal(passes.rows[:, 0], rows.batch)
    col = passes.rows[:, 1]
    assert torch.equal(pos[rows.batch, col], rows.teacher_pos)
    assert torch.equal(seg[rows.batch, col], 1 + batch.take_pass2[rows.batch, rows.teacher_pos].long())
    assert (ids[rows.batch, col] == WEDLM_MASK).all()


def test_pipeline_a_passes_stack_every_pass_and_ask_only_for_active_chunk_tokens():
    """LLaDA2 (§2.1): pass p is the clean teacher ids with the teacher's mask where pass p masks; a target
    (the clean id, §9.3) only on tokens of active chunks, in the pass whose log-prob wins there (§4.4)."""
    from tests.helpers import tiny_distill as td

    dataset = td.make_dataset(4, "A", seq_length=48)
    cfg = StageConfig.from_meta(dataset.meta, block_size=16, compdemo_ratio=0.5)
    batch = DistillBatch.from_stage(TideCollator(cfg, seed=2)([dataset[i] for i in range(4)]))
    mask, pad = td.MOE_TEACHER["mask_token_id"], td.MOE_TEACHER["pad_token_id"]
    passes = build_teacher_passes(batch, mask, pad, 16)
    P, (b, Lt) = batch.num_passes, batch.teacher_ids.shape
    assert P == 2 and passes.payload == "token_logprobs"
    ids = passes.inputs["ids"].view(P, b, Lt)
    targets = passes.inputs["targets"].view(P, b, Lt)
    for p in range(P):
        assert torch.equal(ids[p], torch.where(batch.teacher_pass_masks[p], mask, batch.teacher_ids))
    active = (batch.teacher_chunk >= 0) & batch.active.gather(1, batch.teacher_chunk.clamp_min(0))
    wins = torch.stack([~batch.take_pass2, batch.take_pass2])
    assert active.any() and torch.equal(targets >= 0, active[None] & wins)
    assert torch.equal(targets[targets >= 0], batch.teacher_ids[None].expand(P, b, Lt)[targets >= 0])
    assert torch.equal(needed_teacher_tokens(batch), targets >= 0)
    assert torch.equal(passes.inputs["att"].view(P, b, Lt), batch.teacher_attention[None].expand(P, b, Lt))


def test_teacher_mask_id_is_resolved_once_from_config_checkpoint_and_dataset():
    """§9.1, §2.2: teacher.mask_id, else config.json, else WeDLM's 151665; a pairs dataset (the student's
    tokenizer) yields to the teacher's own id, a chunks dataset must agree with it."""
    hf = {"vocab_size": 151936}
    assert checkpoint_mask_id(None, hf, "wedlm") == 151665 and checkpoint_mask_id(7, hf, "wedlm") == 7
    assert checkpoint_mask_id(None, {"mask_token_id": 156895}, "llada2") == 156895
    assert checkpoint_mask_id(None, {"vocab_size": 128}, "wedlm") is None
    student_side = {"mask_id": 151669}
    assert teacher_mask_id(151665, student_side, "pairs", "data.train") == 151665
    assert teacher_mask_id(None, student_side, "pairs", "data.train") == 151669
    with pytest.raises(ValueError, match="teacher.mask_id: the teacher uses mask id 5 .* has 156895"):
        teacher_mask_id(5, {"mask_id": 156895}, "chunks", "data.train")


def test_a_batch_without_alignment_is_refused():
    batch = _pair_batch(compdemo=False)
    with pytest.raises(ValueError, match="vocab_limit"):
        build_teacher_passes(batch, WEDLM_MASK, PAD, BLOCK)
    batch.pair_student = None
    with pytest.raises(ValueError, match="neither a chunk nor a pair alignment"):
        build_teacher_passes(batch, WEDLM_MASK, PAD, BLOCK, vocab_limit=10)


def test_teacher_passes_in_one_compacted_sequence_keep_their_own_two_half_masks():
    """[x0 ; xt_1 ; xt_2] with every xt block needed: each pass sees exactly spec §11.4's [x0 ; xt] mask
    (restricted to the kept x0 blocks: the last x0 block precedes no xt block and is dropped)."""
    L, B, P = 8, 4, 2
    x0 = torch.arange(L)[None]
    xts = torch.stack([x0 + 100, x0 + 200])
    c = compact_teacher_inputs(x0, xts, torch.ones(P, 1, L // B, dtype=torch.bool), B, pad_id=-1)
    mask = BlockDiffusionMask(c.segment, c.block).dense_allowed()[0, 0]
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
    L, B = 16, 4
    x0 = torch.arange(L)[None]
    xts = torch.stack([x0 + 100, x0 + 200])
    need = torch.zeros(2, 1, L // B, dtype=torch.bool)
    need[0, 0, 2] = True  # pass 1 needs block 2 only; pass 2 needs nothing
    c = compact_teacher_inputs(x0, xts, need, B, pad_id=-1)
    assert c.ids[0].tolist() == list(range(8)) + list(range(108, 112))  # x0 blocks 0-1, xt_1 block 2
    assert (c.index[1] < 0).all() and c.index[0, 0, 8:12].tolist() == [8, 9, 10, 11]
    mask = BlockDiffusionMask(c.segment, c.block).dense_allowed()[0, 0]
    assert mask[8:12, :8].all() and mask[8:12, 8:12].all()  # xt block 2: x0 blocks 0-1 and itself

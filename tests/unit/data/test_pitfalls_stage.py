"""Spec §9.1 at the train-time stage with Pipeline B's real ids (see docs/PITFALLS.md): student and WeDLM share
the Qwen3 vocabulary but not the mask id (student <|mask|> 151669, WeDLM 151665), so the student's mask must
never reach the teacher's input and the teacher's mask never the student's, in every CompDemo pass too.
The teacher's inputs are built from the stage's output by `teacher.passes` (tests/unit/teacher/test_passes.py)."""

import torch

from tide_megatron.data.batch import DistillBatch
from tide_megatron.data.stage import StageConfig, TideCollator
from tide_megatron.teacher.passes import build_teacher_passes

STUDENT_MASK, WEDLM_MASK = 151669, 151665  # §1.1, §2.2
EOS, PAD = 151645, 151643  # <|im_end|>, <|endoftext|>
TEMPLATE = [151644, 872, 198]  # teacher-only template tokens before the shared content


def _samples(n: int, seed: int = 0) -> list[dict]:
    """Shared-tokenizer samples (§2.4): prompt + response ids; the teacher repeats them after its own template;
    pairs join the i-th response token on both sides."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        prompt = torch.randint(0, PAD, (5,), generator=g)
        response = torch.randint(0, PAD, (int(torch.randint(10, 40, (), generator=g)),), generator=g)
        ids = torch.cat([prompt, response])
        labels = torch.cat([torch.full((5,), -100), response])
        teacher = torch.cat([torch.tensor(TEMPLATE), ids])
        pairs = torch.stack([torch.arange(5, len(ids)), torch.arange(5, len(ids)) + len(TEMPLATE)], 1)
        out.append(dict(student_ids=ids, student_labels=labels, teacher_ids=teacher,
                        chunks=torch.zeros(0, 4, dtype=torch.long), pairs=pairs, index=torch.tensor(i)))
    return out


def test_pipeline_b_stage_keeps_student_and_teacher_mask_ids_apart():
    cfg = StageConfig(student_mask_id=STUDENT_MASK, student_eos_id=EOS, student_pad_id=PAD,
                      teacher_eos_id=EOS, teacher_pad_id=PAD, align="pairs",
                      student_len=64, block_size=32, compdemo_ratio=0.5)
    batch = TideCollator(cfg, seed=5)(_samples(6))
    m, tm = batch["student_mask"], batch["teacher_mask"]
    assert m.any() and tm.any() and batch["demo_teacher_mask_a"].any() and batch["demo_teacher_mask_b"].any()
    assert torch.equal(batch["student_noised_ids"], torch.where(m, STUDENT_MASK, batch["input_ids"]))
    assert not (batch["student_noised_ids"] == WEDLM_MASK).any()
    # The stage writes no mask id into the teacher side at all: every teacher tensor is clean or boolean.
    assert not (batch["teacher_ids"] == STUDENT_MASK).any() and not (batch["teacher_ids"] == WEDLM_MASK).any()
    # Only the teacher's own mask id goes into the teacher input, only where each pass masks the teacher.
    passes = build_teacher_passes(DistillBatch.from_stage(batch), WEDLM_MASK, PAD, 32, vocab_limit=PAD)
    ids, seg, pos = passes.inputs["ids"], passes.inputs["seg"], passes.inputs["pos"]
    assert not (ids == STUDENT_MASK).any()
    where = torch.stack([batch["demo_teacher_mask_b"], batch["demo_teacher_mask_a"]])  # pass 1 = M_B, pass 2 = M_A
    xt = seg > 0
    k = torch.arange(ids.shape[0])[:, None].expand_as(ids)
    assert torch.equal(ids[xt] == WEDLM_MASK, where[seg[xt] - 1, k[xt], pos[xt]])

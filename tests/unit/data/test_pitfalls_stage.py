"""Spec §9.1 at the train-time stage with Pipeline B's real ids (see docs/PITFALLS.md): student and WeDLM share
the Qwen3 vocabulary but not the mask id (student <|mask|> 151669, WeDLM 151665), so the student's mask must
never reach the teacher's input and the teacher's mask never the student's, in every CompDemo pass too."""

import torch

from tide_megatron.data.stage import StageConfig, TideCollator

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
                      teacher_mask_id=WEDLM_MASK, teacher_eos_id=EOS, teacher_pad_id=PAD, align="pairs",
                      student_len=64, block_size=32, compdemo_ratio=0.5)
    batch = TideCollator(cfg, seed=5)(_samples(6))
    m, tm = batch["student_mask"], batch["teacher_mask"]
    assert m.any() and tm.any() and bool(batch["demo_two_pass"])
    # Only the teacher's own mask id is written into the teacher input, only where the teacher is masked.
    assert torch.equal(batch["teacher_input_ids"], torch.where(tm, WEDLM_MASK, batch["teacher_ids"]))
    assert torch.equal(batch["student_noised_ids"], torch.where(m, STUDENT_MASK, batch["input_ids"]))
    for key in ("teacher_input_ids", "demo_pass1_ids", "demo_pass2_ids"):
        assert not (batch[key] == STUDENT_MASK).any(), key
    assert not (batch["student_noised_ids"] == WEDLM_MASK).any()
    passes = (("demo_pass1_ids", batch["demo_teacher_mask_b"]), ("demo_pass2_ids", batch["demo_teacher_mask_a"]))
    for key, where in passes:
        assert torch.equal(batch[key], torch.where(where, WEDLM_MASK, batch["teacher_ids"])), key

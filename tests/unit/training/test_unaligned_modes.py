"""The unaligned token modes (spec §6: ``kl``, ``reverse_kl``, ``taid``; Pipeline B with one template): the same
formulas as the aligned modes, on every masked position, with the teacher reading the student's own sequence
(teacher position = student position).

References are independent of the code under test: transformers' Qwen3 for the student and the dense teacher,
the §2.2 x0-first block-diffusion mask written query by query, and the KL / TIDAL formulas of §3 / §6 in float64.
"""

import math
from pathlib import Path

import pytest
import torch

from tests.helpers import tiny_distill as td
from tests.helpers.reference_masks import bd3lm_allowed
from tide_megatron.config import config_from_dict
from tide_megatron.data.batch import DistillBatch
from tide_megatron.models.convert.reference import load_hf_reference
from tide_megatron.training.trainer import DistillTrainer

SEQ, BLOCK = 64, 16
SHARED = td.STUDENT_VOCAB - 8
T = 2.0


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tiny_unaligned")
    td.write_student(root / "student")
    td.write_dense_teacher(root / "dense")
    return root


def _trainer(artifacts: Path, out: Path, mode: str, compdemo: bool = False, teacher_template: int = 0):
    raw = {"preset": "b_kl", "output_dir": str(out),
           "student": {"checkpoint": str(artifacts / "student"), "seq_length": SEQ, "block_size": BLOCK},
           "teacher": {"checkpoint": str(artifacts / "dense"), "dtype": "fp32"},
           "data": {"micro_batch_size": 2, "num_workers": 0},
           "optim": {"train_steps": 3, "lr": 1e-3},
           "objective": {"mode": mode, "shared_vocab": SHARED, "compdemo": compdemo},
           "precision": {"dtype": "fp32"},
           "checkpoint": {"resume": "none", "save_interval": 1000, "save_at_end": False},
           "logging": {"log_interval": 1000, "tensorboard": False}}
    data = td.make_dataset(16, "B", seq_length=SEQ, teacher_template=teacher_template)
    return DistillTrainer(config_from_dict(raw), data)


def _batch(trainer, compdemo: bool = False) -> DistillBatch:
    """The first pair of samples holding a masked position without an alignment pair (the trained eos fill of
    §1.2: maskable, but in no pair), and with CompDemo both M_A and M_B non-empty."""
    for first in range(0, len(trainer.train_data) - 1, 2):
        batch = DistillBatch.from_stage(trainer.collator([trainer.train_data[i] for i in range(first, first + 2)]))
        split = not compdemo or bool((batch.student_pass2 & batch.masked).any() and
                                     (batch.masked & ~batch.student_pass2).any())
        if _masked_unpaired(batch) and split:
            return batch
    pytest.fail("no batch with a masked unpaired position")



def _forward(reference, ids, L, x0_first):
    b = ids.shape[0]
    mask = torch.zeros(2 * L, 2 * L).masked_fill(~bd3lm_allowed(L, BLOCK, x0_first), torch.finfo(torch.float32).min)
    with torch.no_grad():
        out = reference(input_ids=ids, position_ids=torch.arange(L).repeat(2).expand(b, 2 * L),
                        attention_mask=mask[None, None].expand(b, 1, 2 * L, 2 * L)).logits
    return (out[:, L:] if x0_first else out[:, :L]).double()


def _student_logits(artifacts, batch):
    """[xt ; x0], the xt half (§1.4)."""
    return _forward(load_hf_reference(str(artifacts / "student")), torch.cat([batch.xt, batch.x0], 1),
                    batch.x0.shape[1], x0_first=False)


def _teacher_logits(artifacts, batch, pass_mask):
    """The teacher on the *student's* sequence [x0 ; xt] (x0 first, §2.2), with the teacher's mask id."""
    mask_id = td.DENSE_TEACHER_IDS["mask_token_id"]
    xt = torch.where(pass_mask, mask_id, batch.x0)
    return _forward(load_hf_reference(str(artifacts / "dense")), torch.cat([batch.x0, xt], 1), batch.x0.shape[1],
                    x0_first=True)


def _masked_unpaired(batch) -> bool:
    paired = torch.zeros_like(batch.masked)
    for k in range(batch.x0.shape[0]):
        paired[k, batch.pair_student[k][batch.pair_valid[k]]] = True
    return bool((batch.masked & ~paired).any())


@pytest.mark.parametrize("mode", ["kl", "reverse_kl"])
def test_kl_covers_every_masked_position_with_the_teacher_on_the_students_sequence(artifacts, tmp_path, mode):
    trainer = _trainer(artifacts, tmp_path, mode)
    batch = _batch(trainer)  # K must also hold the masked positions without a pair
    rows = batch.masked.nonzero().tolist()
    zt = _teacher_logits(artifacts, batch, batch.masked)
    zs = _student_logits(artifacts, batch)
    with torch.no_grad():
        payload = trainer.teacher_payload(batch)
        terms = trainer.student_loss(batch, payload)
    want_rows = torch.stack([zt[k, i, :SHARED] for k, i in rows])
    assert payload.shape == (len(rows), SHARED)
    torch.testing.assert_close(payload.double(), want_rows, rtol=1e-4, atol=1e-4)
    s = torch.stack([zs[k, i, :SHARED] for k, i in rows]) / T
    t = want_rows / T
    p, q = (t, s) if mode == "kl" else (s, t)  # KL(p || q)
    kl = (p.softmax(-1) * (p.log_softmax(-1) - q.log_softmax(-1))).sum(-1)
    assert terms[f"loss/{mode}"] == pytest.approx((T * T * kl.mean()).item(), rel=1e-4)
    trainer.close()


def test_taid_with_compdemo_reads_each_row_from_the_pass_that_masked_it(artifacts, tmp_path):
    """§3 on every masked position; §4: pass 1 masks M_B, pass 2 masks M_A (in student positions), and each row
    comes from the pass where it was masked."""
    trainer = _trainer(artifacts, tmp_path, "taid", compdemo=True)
    batch = _batch(trainer, compdemo=True)
    m_a = batch.student_pass2
    assert batch.num_passes == 2
    pass1, pass2 = (_teacher_logits(artifacts, batch, batch.masked & ~m_a),
                    _teacher_logits(artifacts, batch, m_a & batch.masked))
    rows = batch.masked.nonzero().tolist()
    want = torch.stack([(pass2 if m_a[k, i] else pass1)[k, i, :SHARED] for k, i in rows])
    trainer.state.step = 2
    with torch.no_grad():
        payload = trainer.teacher_payload(batch)
        terms = trainer.student_loss(batch, payload)
    torch.testing.assert_close(payload.double(), want, rtol=1e-4, atol=1e-4)
    zs = torch.stack([_student_logits(artifacts, batch)[k, i, :SHARED] for k, i in rows]) / T
    t_rows = batch.t.double()[[k for k, _ in rows]]
    lam = (0.1 + 0.8 * 0.5 * (1 - math.cos(math.pi * 2 / 3))) * (1 - t_rows)
    omega = torch.exp(-((t_rows - 0.5) ** 2) / (2 * 0.15 ** 2))  # taid's recipe: midrange
    r = torch.softmax((1 - lam[:, None]) * zs + lam[:, None] * want / T, -1)
    kl = (r * (r.clamp_min(1e-8).log() - torch.log_softmax(zs, -1))).sum(-1)
    assert terms["loss/taid"] == pytest.approx((T * T * (omega * kl).sum() / len(rows)).item(), rel=1e-4)
    trainer.close()


def test_two_templates_are_refused_at_start_up(artifacts, tmp_path):
    """The tiny pipeline-B dataset renders the teacher with 3 template tokens more: not one template."""
    with pytest.raises(ValueError, match=r"objective.mode: an unaligned token mode .*\(two chat templates\)"):
        _trainer(artifacts, tmp_path, "kl", teacher_template=3)


def test_a_batch_with_two_templates_is_refused_when_its_passes_are_built(artifacts, tmp_path):
    trainer = _trainer(artifacts, tmp_path, "reverse_kl")
    samples = [dict(s, index=torch.tensor(i)) for i, s in enumerate(td.make_samples(2, "B", teacher_template=2))]
    other = DistillBatch.from_stage(trainer.collator(samples))
    with pytest.raises(ValueError, match="two chat templates"):
        trainer.teacher_payload(other)
    trainer.close()


def test_aligned_modes_keep_the_pairs(artifacts, tmp_path):
    """kl_aligned on the same one-template data: K is the paired masked positions only (§2.4), fewer rows."""
    trainer = _trainer(artifacts, tmp_path, "kl_aligned")
    batch = _batch(trainer)
    with torch.no_grad():
        payload = trainer.teacher_payload(batch)
    paired = sum(int(batch.masked[k, s]) for k in range(2) for s, v in zip(batch.pair_student[k], batch.pair_valid[k])
                 if v)
    assert payload.shape[0] == paired < int(batch.masked.sum())
    trainer.close()

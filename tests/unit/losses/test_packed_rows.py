"""Packed student logits (only the rows the terms read, ``LossInputs.student_rows``) give the loss and gradients of
full ``[b, L, V]`` logits, for every mode of the catalogue (§6, §9.21)."""

import warnings
from dataclasses import replace

import pytest
import torch

from tests.unit.losses.test_modes import C, SHARED, make_batch
from tide_megatron.align.rows import aligned_rows, masked_rows
from tide_megatron.align.masking import chunk_consistent_masking
from tide_megatron.diffusion.noise import IGNORE_INDEX
from tide_megatron.losses.modes import MODES, LossInputs, ObjectiveConfig, build_objective, rows_read


def _inputs(mode: str, d: dict) -> LossInputs:
    spec = MODES[mode]
    if spec.chunk_level:
        cm = chunk_consistent_masking(d["masked"], d["s_chunk"], d["t_chunk"],
                                      torch.where(d["maskable"], d["x0"], IGNORE_INDEX), C)
        return LossInputs(None, d["x0"], cm.student_mask, d["maskable"], d["t"], student_chunk=d["s_chunk"],
                          teacher_chunk=d["t_chunk"], teacher_token_logp=d["t_logp"], active=cm.active)
    rows = (aligned_rows(d["masked"], d["pair_s"], d["pair_t"], d["pair_valid"]) if spec.aligned
            else masked_rows(d["masked"]))
    return LossInputs(None, d["x0"], d["masked"], d["maskable"], d["t"], rows=rows,
                      teacher_rows=d["teacher_logits"][rows.batch, rows.teacher_pos])


@pytest.mark.parametrize("extra_rows", [False, True])
@pytest.mark.parametrize("mode", list(MODES))
def test_packed_rows_equal_full_logits(mode, extra_rows):
    d = make_batch()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        obj = build_objective(mode, ObjectiveConfig(shared_vocab=SHARED))
    x = _inputs(mode, d)
    full = d["logits"].clone().requires_grad_()
    ref = obj(replace(x, student_logits=full), step=30, total_steps=100).total
    g_ref, = torch.autograd.grad(ref, full)

    read = rows_read(x)
    assert not read.all()  # the test leaves rows out
    if extra_rows:  # rows no term reads may be packed too
        read = read.clone()
        read[0, 0] = read[1, 1] = True
    seq, pos = read.nonzero(as_tuple=True)
    leaf = d["logits"].clone().requires_grad_()
    packed = leaf[seq, pos]
    out = obj(replace(x, student_logits=packed, student_rows=torch.stack([seq, pos], 1)), step=30, total_steps=100)
    g_packed, = torch.autograd.grad(out.total, leaf)
    torch.testing.assert_close(out.total, ref, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(g_packed, g_ref, rtol=1e-5, atol=1e-7)
    assert not g_ref[~read].any()  # the rows left out get no gradient in the full computation either


def test_a_distilled_row_missing_from_the_packed_logits_is_an_error():
    d = make_batch()
    obj = build_objective("kl_aligned", ObjectiveConfig(shared_vocab=SHARED))
    x = _inputs("kl_aligned", d)
    seq, pos = x.rows.batch[1:], x.rows.student_pos[1:]  # the first distilled row left out
    with pytest.raises(ValueError, match="distilled row was not computed"):
        obj(replace(x, student_logits=d["logits"][seq, pos], student_rows=torch.stack([seq, pos], 1)))


def test_rows_read_covers_masked_distilled_and_active_chunk_rows():
    d = make_batch()
    x = _inputs("alm", d)
    x.active = torch.zeros_like(x.active)
    x.active[1, 0] = True  # chunk 0 of sequence 1 is position 1; make it unmasked to see it added
    x.masked = x.masked.clone()
    x.masked[1, 1] = False
    read = rows_read(x)
    assert read[1, 1] and (read | ~x.masked).all()
    y = _inputs("kl", d)
    y.masked = torch.zeros_like(y.masked)
    assert rows_read(y)[y.rows.batch, y.rows.student_pos].all()

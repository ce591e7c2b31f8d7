"""Mode catalogue (§6): composition CE + term against float64 reference formulas, and config validation."""

import math
import warnings

import pytest
import torch

from tide_megatron.align.masking import chunk_consistent_masking
from tide_megatron.diffusion.noise import IGNORE_INDEX
from tide_megatron.losses.modes import MODES, LossInputs, ObjectiveConfig, build_objective
from tide_megatron.align.rows import aligned_rows, masked_rows

B, L, LT, V, SHARED, C = 2, 8, 9, 13, 11, 4
HI = float(torch.tensor(1 - 1e-7, dtype=torch.float32))


def make_batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = 2 * torch.randn(B, L, V, generator=g)
    x0 = torch.randint(0, V, (B, L), generator=g)
    maskable = torch.ones(B, L, dtype=torch.bool)
    maskable[:, :2] = False  # prompt
    masked = maskable & (torch.rand(B, L, generator=g) < 0.6)
    masked[0, 3] = True
    t = torch.tensor([0.3, 0.8])
    pair_s = torch.tensor([[2, 3, 4, 5, 6, 0], [2, 3, 5, 6, 7, 0]])
    pair_t = torch.tensor([[3, 4, 5, 6, 7, 0], [1, 2, 4, 5, 8, 0]])
    pair_valid = torch.tensor([[True] * 5 + [False], [True] * 5 + [False]])
    teacher_logits = 2 * torch.randn(B, LT, V, generator=g)
    s_chunk = torch.tensor([[-1, -1, 0, 0, 1, 2, 2, 3], [-1, 0, 1, 1, 2, -1, 3, 3]])
    t_chunk = torch.tensor([[-1, 0, 1, 1, 2, 3, -1, -1, -1], [0, 0, 1, 2, 2, 3, 3, -1, -1]])
    t_logp = -torch.rand(B, LT, generator=g)
    return dict(logits=logits, x0=x0, maskable=maskable, masked=masked, t=t, pair_s=pair_s, pair_t=pair_t,
                pair_valid=pair_valid, teacher_logits=teacher_logits, s_chunk=s_chunk, t_chunk=t_chunk, t_logp=t_logp)


def ref_ce(l64, d, masked):
    nll = -torch.log_softmax(l64, -1).gather(-1, d["x0"].unsqueeze(-1)).squeeze(-1)
    return (nll * masked / (d["t"].double()[:, None] + 1e-6)).sum() / d["maskable"].sum()


def ref_token_term(term, reverse, zs, zt, lam, omega, T=2.0):
    zs, zt = zs[:, :SHARED] / T, zt[:, :SHARED] / T
    ls = torch.log_softmax(zs, -1)
    if term == "kl":
        lt = torch.log_softmax(zt, -1)
        kl = (ls.exp() * (ls - lt)).sum(-1) if reverse else (lt.exp() * (lt - ls)).sum(-1)
        return T * T * kl.mean()
    r = torch.softmax((1 - lam[:, None]) * zs + lam[:, None] * zt, -1).detach()
    kl = (r * (r.clamp_min(1e-8).log() - ls)).sum(-1)
    return T * T * (omega * kl).sum() / zs.shape[0]


def ref_chunk_term(term, reverse, l64, d, active, lam, T=5.0):
    lp = torch.log_softmax(l64, -1).gather(-1, d["x0"].unsqueeze(-1)).squeeze(-1)
    onehot = lambda ids: torch.nn.functional.one_hot(ids.clamp_min(0), C).double() * (ids >= 0).unsqueeze(-1)
    s = torch.exp(torch.einsum("bl,blc->bc", lp, onehot(d["s_chunk"])) / T).clamp(1e-7, HI)
    t = torch.exp(torch.einsum("bl,blc->bc", d["t_logp"].double(), onehot(d["t_chunk"])) / T).clamp(1e-7, HI)
    if term == "chunk_tidal":
        t = ((1 - lam[:, None]) * s.detach() + lam[:, None] * t).clamp(1e-7, HI)
    Lc = -(s * t.log() + (1 - s) * (1 - t).log()) if reverse else -(t * s.log() + (1 - t) * (1 - s).log())
    return (Lc * active).sum() / active.sum()


@pytest.mark.parametrize("mode", list(MODES))
def test_every_mode_matches_reference(mode):
    d = make_batch()
    spec = MODES[mode]
    step, total = 300, 1000
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        obj = build_objective(mode, ObjectiveConfig(shared_vocab=SHARED))
    logits = d["logits"].clone().requires_grad_()
    l64 = d["logits"].double().requires_grad_()
    rho = step / total
    lam_train = 0.1 + 0.8 * 0.5 * (1 - math.cos(math.pi * rho))
    lam = lam_train * (1 - d["t"].double())
    if spec.chunk_level:
        cm = chunk_consistent_masking(d["masked"], d["s_chunk"], d["t_chunk"],
                                      torch.where(d["maskable"], d["x0"], IGNORE_INDEX), C)
        assert cm.active.any()
        x = LossInputs(logits, d["x0"], cm.student_mask, d["maskable"], d["t"], student_chunk=d["s_chunk"],
                       teacher_chunk=d["t_chunk"], teacher_token_logp=d["t_logp"], active=cm.active)
        ref = ref_ce(l64, d, cm.student_mask) + ref_chunk_term(spec.term, spec.reverse, l64, d, cm.active, lam)
    else:
        rows = (aligned_rows(d["masked"], d["pair_s"], d["pair_t"], d["pair_valid"]) if spec.aligned
                else masked_rows(d["masked"]))
        assert len(rows) > 0
        teacher_rows = d["teacher_logits"][rows.batch, rows.teacher_pos]
        x = LossInputs(logits, d["x0"], d["masked"], d["maskable"], d["t"], rows=rows, teacher_rows=teacher_rows)
        omega = torch.exp(-((d["t"].double() - 0.5) ** 2) / (2 * 0.15 ** 2))  # token TIDAL default: midrange
        ref = ref_ce(l64, d, d["masked"]) + ref_token_term(
            spec.term, spec.reverse, l64[rows.batch, rows.student_pos], teacher_rows.double(),
            lam[rows.batch], omega[rows.batch])
    out = obj(x, step=step, total_steps=total)
    out.total.backward()
    ref.backward()
    torch.testing.assert_close(out.total.double(), ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(logits.grad.double(), l64.grad, rtol=1e-4, atol=1e-6)
    assert set(out.terms) == {mode}
    torch.testing.assert_close(out.total, out.ce + out.terms[mode])


def test_aligned_rows_use_only_valid_masked_pairs():
    d = make_batch()
    rows = aligned_rows(d["masked"], d["pair_s"], d["pair_t"], d["pair_valid"])
    expect = [(b, int(s), int(t)) for b in range(B)
              for s, t, v in zip(d["pair_s"][b], d["pair_t"][b], d["pair_valid"][b]) if v and d["masked"][b, s]]
    got = list(zip(rows.batch.tolist(), rows.student_pos.tolist(), rows.teacher_pos.tolist()))
    assert got == expect


def test_composite_counts_ce_once():
    d = make_batch(1)
    rows = aligned_rows(d["masked"], d["pair_s"], d["pair_t"], d["pair_valid"])
    x = LossInputs(d["logits"], d["x0"], d["masked"], d["maskable"], d["t"], rows=rows,
                   teacher_rows=d["teacher_logits"][rows.batch, rows.teacher_pos])
    cfg = ObjectiveConfig(shared_vocab=SHARED, kl_weight=0.5)
    both = build_objective("taid_aligned+kl_aligned", cfg)(x, 10, 100)
    taid = build_objective("taid_aligned", cfg)(x, 10, 100)
    kl = build_objective("kl_aligned", cfg)(x, 10, 100)
    torch.testing.assert_close(both.total, taid.ce + taid.terms["taid_aligned"] + 0.5 * kl.terms["kl_aligned"])


def test_full_width_teacher_rows_are_accepted():
    d = make_batch(2)
    rows = masked_rows(d["masked"])
    full = d["teacher_logits"][rows.batch, rows.teacher_pos]
    obj = build_objective("kl", ObjectiveConfig(shared_vocab=SHARED))
    a = obj(LossInputs(d["logits"], d["x0"], d["masked"], d["maskable"], d["t"], rows=rows, teacher_rows=full))
    b = obj(LossInputs(d["logits"], d["x0"], d["masked"], d["maskable"], d["t"], rows=rows,
                       teacher_rows=full[:, :SHARED].contiguous()))
    torch.testing.assert_close(a.total, b.total)


def test_validation_errors_and_warning():
    with pytest.raises(ValueError, match="valid modes: kl_aligned, reverse_kl_aligned, taid_aligned"):
        build_objective("tidal_aligned")
    with pytest.raises(ValueError, match="cannot be composed"):
        build_objective("alm+kl")
    with pytest.raises(ValueError, match="aligned and unaligned"):
        build_objective("kl_aligned+taid")
    with pytest.raises(ValueError, match="twice"):
        build_objective("kl+kl")
    with pytest.raises(ValueError, match="alm_temperature"):
        build_objective("alm", ObjectiveConfig(alm_temperature=0))
    with pytest.raises(ValueError, match="axis_mode"):
        build_objective("taid", ObjectiveConfig(axis_mode="steps"))
    with pytest.warns(UserWarning, match="reverse objective"):
        build_objective("reverse_alm_taid")
    with pytest.warns(UserWarning, match="reverse objective"):
        build_objective("taid+reverse_kl")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build_objective("alm_taid")
        build_objective("reverse_alm")
    obj = build_objective("kl_aligned")
    d = make_batch()
    with pytest.raises(ValueError, match="rows"):
        obj(LossInputs(d["logits"], d["x0"], d["masked"], d["maskable"], d["t"]))
    with pytest.raises(ValueError, match="student_chunk"):
        build_objective("alm")(LossInputs(d["logits"], d["x0"], d["masked"], d["maskable"], d["t"]))

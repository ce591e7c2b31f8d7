"""Spec §9 pitfalls on the loss side that no other test pins (see docs/PITFALLS.md for the full map).

References are plain float64 PyTorch written from the spec text, never the code under test.
"""

import math

import pytest
import torch

from tide_megatron.align.rows import masked_rows
from tide_megatron.losses import (
    LossInputs,
    ObjectiveConfig,
    TidalSchedule,
    build_objective,
    calm_loss,
    chunk_loglik,
    tidal_loss,
)
from tide_megatron.losses.calm import PROB_MAX, chunk_prob

QWEN3_VOCAB = 151936  # student embedding rows (§1.1)
SHARED = 151646  # ids [0, 151646) shared by the Qwen3 student and WeDLM (§2.2)
STUDENT_ONLY_ROWS = (151646, 151667, 151669, 151935)  # e.g. <think>, <|mask|>, padding rows (§9.1)


def _full_width_batch(seed: int):
    """One sequence of 3 positions, all maskable and masked, with full Qwen3-width logits on both sides."""
    g = torch.Generator().manual_seed(seed)
    student = torch.randn(1, 3, QWEN3_VOCAB, generator=g)
    teacher = torch.randn(1, 3, QWEN3_VOCAB, generator=g)
    x0 = torch.tensor([[11, 151643, 151645]])  # an ordinary id, <|endoftext|>, <|im_end|>
    ones = torch.ones(1, 3, dtype=torch.bool)
    return student, teacher, x0, ones


def _ref_kl_term(mode: str, zs: torch.Tensor, zt: torch.Tensor, t: torch.Tensor, step: int, total: int):
    """§3 / §6 in float64 on rows already cut to the shared vocabulary (T = 2, token TIDAL midrange ω)."""
    T = 2.0
    ls, lt = torch.log_softmax(zs / T, -1), torch.log_softmax(zt / T, -1)
    if mode == "kl":
        return T * T * (lt.exp() * (lt - ls)).sum(-1).mean()
    if mode == "reverse_kl":
        return T * T * (ls.exp() * (ls - lt)).sum(-1).mean()
    lam_train = 0.1 + 0.8 * 0.5 * (1 - math.cos(math.pi * step / total))
    lam = lam_train * (1 - t)
    omega = math.exp(-((t - 0.5) ** 2) / (2 * 0.15 ** 2))
    r = torch.softmax((1 - lam) * zs / T + lam * zt / T, -1)
    kl = (r * (r.clamp_min(1e-8).log() - ls)).sum(-1)
    return T * T * (omega * kl).sum() / zs.shape[0]


@pytest.mark.parametrize("mode", ["kl", "reverse_kl", "taid"])
def test_default_objective_slices_both_sides_to_151646_and_ce_keeps_the_full_vocabulary(mode):
    """§9.1 + §9.2: the default config cuts student *and* teacher rows to ids < 151646 before the softmax, so
    student-only rows (<think>, <|mask|>, padding rows up to 151935) never enter KL/TIDAL; the CE still
    normalises over all 151 936 rows."""
    assert ObjectiveConfig().shared_vocab == SHARED
    student, teacher, x0, ones = _full_width_batch(0)
    t = torch.tensor([0.3])
    obj = build_objective(mode)
    rows = masked_rows(ones)

    def run(s, z_t):
        s = s.clone().requires_grad_()
        out = obj(LossInputs(s, x0, ones, ones, t, rows=rows, teacher_rows=z_t[0]), step=250, total_steps=1000)
        out.terms[mode].backward()
        return out, s.grad

    out, grad = run(student, teacher)
    zs, zt = student[0].double()[:, :SHARED], teacher[0].double()[:, :SHARED]
    ref = _ref_kl_term(mode, zs, zt, 0.3, 250, 1000)
    torch.testing.assert_close(out.terms[mode].double(), ref, rtol=1e-5, atol=1e-7)
    assert torch.count_nonzero(grad[..., SHARED:]) == 0

    # Large logits on student-only rows, on either side, change nothing in the distillation term ...
    spiked_s, spiked_t = student.clone(), teacher.clone()
    for row in STUDENT_ONLY_ROWS:
        spiked_s[..., row] = 30.0
        spiked_t[..., row] = 30.0
    spiked, _ = run(spiked_s, spiked_t)
    torch.testing.assert_close(spiked.terms[mode], out.terms[mode], rtol=1e-6, atol=1e-7)
    # ... while the CE, over the full vocabulary, does see them (§9.2).
    full_nll = -torch.log_softmax(spiked_s[0].double(), -1).gather(1, x0[0, :, None]).squeeze(1)
    ref_ce = (full_nll / (0.3 + 1e-6)).sum() / 3
    torch.testing.assert_close(spiked.ce.double(), ref_ce, rtol=1e-5, atol=1e-6)
    assert spiked.ce.item() > out.ce.item() + 10


def test_paper_defaults_weights_and_temperatures():
    """§9.20: every weight is 1.0; T_kl = 2 and T_alm = 5 (the launch script's value, §10)."""
    c = ObjectiveConfig()
    assert (c.kl_weight, c.taid_weight, c.alm_weight) == (1.0, 1.0, 1.0)
    assert (c.kl_temperature, c.alm_temperature) == (2.0, 5.0)
    assert (c.lambda_init, c.lambda_max, c.lambda_schedule, c.axis_mode) == (0.1, 0.9, "cosine", "both")


def test_distillation_switches_off_as_t_goes_to_1():
    """§9.10: at t -> 1, lambda -> 0 and the midrange omega -> 0.0039; with lambda = 0 the TIDAL target is the
    student itself, so the loss and its gradient are exactly 0 (up to fp32)."""
    t = torch.tensor([1.0 - 1e-7])
    sched = TidalSchedule(timestep_weight="midrange")
    for step in (0, 500, 1000):
        assert sched.lam(t, step, 1000).item() < 1e-6
    assert sched.omega(t).item() == pytest.approx(math.exp(-0.25 / (2 * 0.15 ** 2)), rel=1e-5)
    assert sched.omega(t).item() == pytest.approx(0.0039, abs=1e-4)
    g = torch.Generator().manual_seed(1)
    zs = (3 * torch.randn(4, 50, generator=g)).requires_grad_()
    zt = 3 * torch.randn(4, 50, generator=g)
    loss = tidal_loss(zs, zt, torch.zeros(4))
    loss.backward()
    assert abs(loss.item()) < 1e-5 and zs.grad.abs().max().item() < 1e-6


@pytest.mark.parametrize("mode", ["kl_aligned", "reverse_kl_aligned", "taid_aligned", "kl", "taid",
                                  "alm", "reverse_alm", "alm_taid"])
def test_empty_masked_set_gives_exact_zero_for_every_term(mode):
    """§9.10: no masked position (hence no distilled row and no active chunk) gives exactly 0, no NaN."""
    b, L, V = 2, 4, 16
    logits = torch.randn(b, L, V, requires_grad=True)
    x0 = torch.randint(0, V, (b, L))
    none = torch.zeros(b, L, dtype=torch.bool)
    maskable = torch.ones(b, L, dtype=torch.bool)
    t = torch.tensor([0.2, 0.9])
    obj = build_objective(mode, ObjectiveConfig(shared_vocab=12))
    if obj.chunk_level:
        x = LossInputs(logits, x0, none, maskable, t, student_chunk=torch.tensor([[0, 0, 1, -1]] * b),
                       teacher_chunk=torch.tensor([[0, 1, 1]] * b), teacher_token_logp=-torch.rand(b, 3),
                       active=torch.zeros(b, 2, dtype=torch.bool))
    else:
        rows = masked_rows(none)
        x = LossInputs(logits, x0, none, maskable, t, rows=rows, teacher_rows=torch.zeros(0, V))
    out = obj(x, step=3, total_steps=10)
    assert out.total.item() == 0.0 and out.ce.item() == 0.0
    assert all(term.item() == 0.0 for term in out.terms.values())
    out.total.backward()
    assert torch.count_nonzero(logits.grad) == 0


def test_chunk_sums_of_bf16_log_probs_are_fp32():
    """§9.12: chunk sums are fp32 even when the token log-probs arrive in bf16 (the reference's bf16 sums lose
    about 8 mantissa bits on sums of dozens of log-probs)."""
    g = torch.Generator().manual_seed(2)
    logp = (-3 * torch.rand(1, 96, generator=g)).bfloat16()
    chunk = torch.arange(96).div(48, rounding_mode="floor").unsqueeze(0)  # two chunks of 48 tokens
    got = chunk_loglik(logp, chunk, 2)
    ref = logp.double().view(2, 48).sum(1)
    bf16_sum = torch.zeros(2, dtype=torch.bfloat16)
    for j in range(48):  # what a bf16 accumulation would give
        bf16_sum = bf16_sum + logp.view(2, 48)[:, j]
    assert got.dtype == torch.float32
    torch.testing.assert_close(got[0].double(), ref, rtol=0, atol=1e-4)
    assert (bf16_sum.double() - ref).abs().max().item() > 1e-2  # the test can tell the two apart


def test_upper_clamp_is_applied_in_fp32_on_bf16_inputs():
    """§9.12: 1 - 1e-7 only means something in fp32. A bf16 chunk log-likelihood of -1e-6 gives s = 1 - 1e-6
    (inside the clamp, finite forward-BCE), not bf16's exp(-1e-6) = 1."""
    ll = torch.tensor([[-1e-6]], dtype=torch.bfloat16)
    s = chunk_prob(ll, 1.0)
    assert s.dtype == torch.float32
    assert s.item() == pytest.approx(math.exp(float(ll.float())), rel=0, abs=1e-7) and s.item() < PROB_MAX
    assert torch.exp(ll).item() == 1.0  # bf16 math would have hit the clamp
    leaf = ll.float().requires_grad_()
    loss = calm_loss(leaf, torch.tensor([[-0.5]]), torch.ones(1, 1, dtype=torch.bool), 1.0, reverse=False)
    loss.backward()
    assert torch.isfinite(loss) and leaf.grad.item() != 0.0


def test_lone_masked_token_at_the_smallest_t_keeps_its_weight_of_about_1000():
    """§9.10: t = 1e-3 gives w = 1/(t + 1e-6) = 999.000999, unclipped; the CE divides by the 4 maskable tokens."""
    from tide_megatron.losses import bd3lm_ce

    logits = torch.zeros(1, 4, 8)  # uniform: NLL = ln 8 at every position
    x0 = torch.zeros(1, 4, dtype=torch.long)
    masked = torch.tensor([[False, True, False, False]])
    loss = bd3lm_ce(logits, x0, masked, torch.ones(1, 4, dtype=torch.bool), torch.tensor([1e-3]))
    assert loss.item() == pytest.approx(999.000999 * math.log(8) / 4, rel=1e-6)

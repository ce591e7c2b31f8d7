"""The sequence-chunked output layer + loss equals the loss on full logits, in value and gradients (§9.9, §9.21)."""

import pytest
import torch

from tide_megatron.align.rows import aligned_rows
from tide_megatron.losses import LossInputs, ObjectiveConfig, build_objective
from tide_megatron.training.student_loss import chunked_loss_backward


def _inputs(mode: str, b=4, L=16, V=40, Lt=20, C=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randint(0, V, (b, L), generator=g)
    maskable = torch.ones(b, L, dtype=torch.bool)
    maskable[:, :3] = False
    maskable[1] = False  # a sequence with nothing to learn: its shares are 0
    masked = (torch.rand(b, L, generator=g) < 0.5) & maskable
    t = torch.rand(b, generator=g) * 0.9 + 0.05
    inputs = LossInputs(student_logits=None, x0=x0, masked=masked, maskable=maskable, t=t)
    if mode in ("reverse_alm", "alm_taid", "alm"):
        inputs.student_chunk = torch.where(maskable, torch.arange(L).expand(b, L) // 3, -1)
        inputs.teacher_chunk = torch.arange(Lt).expand(b, Lt) // 4
        inputs.teacher_token_logp = -torch.rand(b, Lt, generator=g)
        inputs.active = torch.rand(b, C, generator=g) < 0.6
    else:
        P = L - 3
        ps = torch.arange(3, L).expand(b, P)
        pt = ps + 2
        pv = torch.ones(b, P, dtype=torch.bool)
        inputs.rows = aligned_rows(masked, ps, pt, pv)
        inputs.teacher_rows = torch.randn(len(inputs.rows), V, generator=g)
    return inputs


@pytest.mark.parametrize("mode", ["ce", "reverse_alm", "alm_taid", "taid_aligned", "kl_aligned"])
@pytest.mark.parametrize("chunk", [1, 3])
def test_chunked_head_and_loss_equal_the_full_logits_loss(mode, chunk):
    torch.manual_seed(1)
    h, V = 8, 40
    inputs = _inputs(mode)
    objective = None if mode == "ce" else build_objective(mode, ObjectiveConfig(shared_vocab=V - 2, alm_temperature=2.0))
    trunk = torch.randn(4, 16, h, requires_grad=True)
    weight = torch.randn(V, h, requires_grad=True)

    # Reference: full logits, one loss, one backward.
    from dataclasses import replace

    from tide_megatron.losses import bd3lm_ce

    logits = torch.tanh(trunk) @ weight.t()
    full = replace(inputs, student_logits=logits)
    ref = bd3lm_ce(logits, inputs.x0, inputs.masked, inputs.maskable, inputs.t) if objective is None else \
        objective(full, step=3, total_steps=10).total
    g_trunk, g_weight = torch.autograd.grad(ref * 0.5, (trunk, weight))

    hidden = torch.tanh(trunk)
    weights = {} if objective is None else {c.name: 1.0 for c in objective.components}
    terms = chunked_loss_backward(hidden, weight, inputs, objective, 3, 10, chunk, weights, scale=0.5)
    assert terms["loss/total"] == pytest.approx(float(ref), rel=1e-5, abs=1e-6)
    torch.testing.assert_close(trunk.grad, g_trunk, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(weight.grad, g_weight, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("mode", ["ce", "reverse_alm", "taid_aligned"])
def test_chunked_head_computes_logits_only_at_the_rows_the_terms_read(mode, monkeypatch):
    from tide_megatron.losses.modes import rows_read
    from tide_megatron.training import student_loss

    inputs = _inputs(mode)
    objective = None if mode == "ce" else build_objective(mode, ObjectiveConfig(shared_vocab=38, alm_temperature=2.0))
    seen = []
    linear = torch.nn.functional.linear

    def counting_linear(x, w, *args):
        seen.append(x.reshape(-1, x.shape[-1]).shape[0])
        return linear(x, w, *args)

    monkeypatch.setattr(student_loss.torch.nn.functional, "linear", counting_linear)
    hidden = torch.randn(4, 16, 8, requires_grad=True)
    weights = {} if objective is None else {c.name: 1.0 for c in objective.components}
    chunked_loss_backward(hidden, torch.randn(40, 8, requires_grad=True), inputs, objective, 3, 10, 1, weights)
    assert sum(seen) == int(rows_read(inputs).sum()) < hidden.shape[0] * hidden.shape[1]

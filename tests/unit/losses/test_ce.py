"""BD3LM CE (§1.5) and the token log-prob primitive: spec vectors §11.7 and float64 gradient checks."""

import math

import pytest
import torch

from tide_megatron.losses.ce import bd3lm_ce, bd3lm_weight
from tide_megatron.losses.vocab_parallel import logsumexp, token_logprobs


def test_weight_vectors_11_7():
    w = bd3lm_weight(torch.tensor([0.25, 0.001]))
    assert w[0].item() == pytest.approx(3.999984, abs=1e-6)
    assert w[1].item() == pytest.approx(999.000999, rel=1e-6)


def _logits_with_nll(nlls, vocab=5):
    """Rows whose log-prob of id 0 is exactly -nll (other ids share the rest of the mass)."""
    rows = []
    for nll in nlls:
        p0 = math.exp(-nll)
        rest = (1 - p0) / (vocab - 1)
        rows.append([math.log(p0)] + [math.log(rest)] * (vocab - 1))
    return torch.tensor(rows, dtype=torch.float64)


def test_ce_vector_11_7():
    # One sequence, 4 maskable tokens, t = 0.5, two masked tokens with NLL 1.0 and 2.0.
    logits = _logits_with_nll([1.0, 2.0, 0.5, 0.7, 3.0]).unsqueeze(0)
    x0 = torch.zeros(1, 5, dtype=torch.long)
    masked = torch.tensor([[True, True, False, False, False]])
    maskable = torch.tensor([[True, True, True, True, False]])
    loss = bd3lm_ce(logits, x0, masked, maskable, torch.tensor([0.5]))
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(1.499997, abs=1e-6)


def test_ce_empty_is_zero():
    logits = torch.randn(2, 3, 7, requires_grad=True)
    x0 = torch.randint(0, 7, (2, 3))
    none = torch.zeros(2, 3, dtype=torch.bool)
    loss = bd3lm_ce(logits, x0, none, none, torch.tensor([0.3, 0.6]))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.count_nonzero(logits.grad) == 0


@pytest.mark.parametrize("b,L,V,chunk_rows", [(1, 1, 3, None), (2, 5, 11, 3), (3, 4, 257, 1)])
def test_ce_matches_float64_autograd(b, L, V, chunk_rows):
    g = torch.Generator().manual_seed(b * 100 + V)
    z = (3 * torch.randn(b, L, V, generator=g)).requires_grad_()
    x0 = torch.randint(0, V, (b, L), generator=g)
    maskable = torch.rand(b, L, generator=g) < 0.8
    masked = maskable & (torch.rand(b, L, generator=g) < 0.6)
    t = torch.rand(b, generator=g) * 0.999 + 1e-3
    loss = bd3lm_ce(z, x0, masked, maskable, t, chunk_rows=chunk_rows)
    loss.backward()

    z64 = z.detach().double().requires_grad_()
    nll = -torch.log_softmax(z64, -1).gather(-1, x0.unsqueeze(-1)).squeeze(-1)
    ref = (masked.double() * nll / (t.double()[:, None] + 1e-6)).sum() / max(1, int(maskable.sum()))
    ref.backward()
    torch.testing.assert_close(loss.double(), ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(z.grad.double(), z64.grad, rtol=1e-4, atol=1e-6)


def test_token_logprobs_bf16_input_fp32_math():
    g = torch.Generator().manual_seed(0)
    z = (4 * torch.randn(6, 1000, generator=g)).bfloat16().requires_grad_()
    tgt = torch.randint(0, 1000, (6,), generator=g)
    lp = token_logprobs(z, tgt, chunk_rows=4)
    assert lp.dtype == torch.float32
    ref = torch.log_softmax(z.detach().double(), -1).gather(1, tgt[:, None]).squeeze(1)
    torch.testing.assert_close(lp.double(), ref, rtol=0, atol=1e-5)
    lp.sum().backward()
    assert z.grad.dtype == torch.bfloat16
    z64 = z.detach().double().requires_grad_()
    torch.log_softmax(z64, -1).gather(1, tgt[:, None]).sum().backward()
    torch.testing.assert_close(z.grad.double(), z64.grad, rtol=0, atol=1e-2)
    torch.testing.assert_close(logsumexp(z).double(), torch.logsumexp(z.detach().double(), -1), rtol=0, atol=1e-5)


def test_token_logprobs_does_not_modify_input():
    z = torch.randn(4, 9)
    before = z.clone()
    token_logprobs(z, torch.tensor([0, 3, 8, 1]))
    assert torch.equal(z, before)


def test_bad_targets_raise():
    with pytest.raises(ValueError, match="targets"):
        token_logprobs(torch.randn(2, 5), torch.tensor([0, 5]))
    with pytest.raises(ValueError, match="masked"):
        bd3lm_ce(torch.randn(1, 2, 5), torch.zeros(1, 2, dtype=torch.long), torch.ones(1, 2),
                 torch.ones(1, 2, dtype=torch.bool), torch.tensor([0.5]))


def test_token_logprobs_on_transposed_view_does_not_copy_logits():
    """megatron's [s, b, V] output seen as [b, s, V]: same values, and no copy of the logits is made."""
    g = torch.Generator().manual_seed(4)
    sbv = torch.randn(5, 3, 11, generator=g).requires_grad_()
    bsv = sbv.transpose(0, 1)
    tgt = torch.randint(0, 11, (3, 5), generator=g)
    seen = []

    def pack(t):
        seen.append(t.untyped_storage().data_ptr())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        lp = token_logprobs(bsv, tgt)
    assert sbv.untyped_storage().data_ptr() in seen
    ref = torch.log_softmax(bsv.detach().double(), -1).gather(-1, tgt.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(lp.double(), ref, rtol=0, atol=1e-6)
    w = torch.rand(3, 5, generator=g)
    (lp * w).sum().backward()
    s64 = sbv.detach().double().requires_grad_()
    (torch.log_softmax(s64.transpose(0, 1), -1).gather(-1, tgt.unsqueeze(-1)).squeeze(-1) * w).sum().backward()
    torch.testing.assert_close(sbv.grad.double(), s64.grad, rtol=1e-5, atol=1e-6)

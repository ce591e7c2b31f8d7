"""CALM / Reverse CALM / chunk-TIDAL (§5.5-5.8): spec vectors §11.5, §11.6, §11.10 (masking), gradients."""

import math

import pytest
import torch

from tide_megatron.losses.calm import calm_loss, chunk_loglik, chunk_tidal_loss
from tide_megatron.losses.vocab_parallel import token_logprobs

# §11.5: student tokens [0.9, 0.8 | 0.5], teacher tokens [0.6 | 0.7, 0.9]; chunk ids per token.
S_LOGP = torch.log(torch.tensor([[0.9, 0.8, 0.5]], dtype=torch.float64)).float()
S_CHUNK = torch.tensor([[0, 0, 1]])
T_LOGP = torch.log(torch.tensor([[0.6, 0.7, 0.9]], dtype=torch.float64)).float()
T_CHUNK = torch.tensor([[0, 1, 1]])
ACTIVE = torch.tensor([[True, True]])


def _lls():
    s_ll = chunk_loglik(S_LOGP, S_CHUNK, 2).requires_grad_()
    return s_ll, chunk_loglik(T_LOGP, T_CHUNK, 2)


def test_chunk_loglik_vector():
    s_ll, t_ll = _lls()
    torch.testing.assert_close(s_ll.exp(), torch.tensor([[0.72, 0.5]]))
    torch.testing.assert_close(t_ll.exp(), torch.tensor([[0.6, 0.63]]))


@pytest.mark.parametrize("T,rev_mean,rev_grad,fwd_mean,fwd_grad", [
    (1.0, 0.676250, [-0.291935, -0.266108], 0.699718, [0.428571, -0.26]),
    (2.0, 0.534049, None, 0.540512, None),
    (5.0, 0.319308, [-0.417573, -0.406546], 0.316882, [0.105460, -0.063628]),
])
def test_calm_vectors_11_5(T, rev_mean, rev_grad, fwd_mean, fwd_grad):
    for reverse, mean, grad in ((True, rev_mean, rev_grad), (False, fwd_mean, fwd_grad)):
        s_ll, t_ll = _lls()
        loss = calm_loss(s_ll, t_ll, ACTIVE, T, reverse=reverse)
        assert loss.item() == pytest.approx(mean, abs=1e-6)
        loss.backward()
        if grad is not None:  # the table lists dL_c/dl_c; the mean over 2 chunks divides by 2
            torch.testing.assert_close(2 * s_ll.grad, torch.tensor([grad]), rtol=0, atol=1e-6)
    if T == 1.0:
        s_ll, t_ll = _lls()
        per_chunk = [calm_loss(s_ll, t_ll, torch.tensor([[c == 0, c == 1]]), 1.0).item() for c in range(2)]
        assert per_chunk == pytest.approx([0.624356, 0.728144], abs=1e-6)
        per_chunk = [calm_loss(s_ll, t_ll, torch.tensor([[c == 0, c == 1]]), 1.0, reverse=False).item()
                     for c in range(2)]
        assert per_chunk == pytest.approx([0.706289, 0.693147], abs=1e-6)


def test_chunk_tidal_vector_11_6():
    lam = torch.tensor([0.5])
    s_ll, t_ll = _lls()
    assert chunk_tidal_loss(s_ll, t_ll, ACTIVE, lam, temperature=1.0).item() == pytest.approx(0.671384, abs=1e-6)
    per_chunk = [chunk_tidal_loss(s_ll, t_ll, torch.tensor([[c == 0, c == 1]]), lam, temperature=1.0).item()
                 for c in range(2)]
    assert per_chunk == pytest.approx([0.649621, 0.693147], abs=1e-6)
    rev = chunk_tidal_loss(s_ll, t_ll, ACTIVE, lam, temperature=1.0, reverse=True)
    assert rev.item() == pytest.approx(0.651454, abs=1e-6)
    # omega scales each sequence; the normaliser stays the active-chunk count.
    half = chunk_tidal_loss(s_ll, t_ll, ACTIVE, lam, torch.tensor([0.5]), temperature=1.0)
    assert half.item() == pytest.approx(0.671384 / 2, abs=1e-6)


def test_empty_active_is_zero():
    s_ll, t_ll = _lls()
    none = torch.zeros(1, 2, dtype=torch.bool)
    assert calm_loss(s_ll, t_ll, none).item() == 0.0
    assert chunk_tidal_loss(s_ll, t_ll, none, torch.tensor([0.3])).item() == 0.0


BOUND = math.log((1 - 1e-7) / 1e-7)
# The clamp bounds as fp32 values: in fp32 1-1e-7 rounds to 1-2**-23 (§9.12: the clamp lives in fp32).
LO = float(torch.tensor(1e-7, dtype=torch.float32))
HI = float(torch.tensor(1 - 1e-7, dtype=torch.float32))


@pytest.mark.parametrize("T", [1.0, 2.0, 5.0])
def test_reverse_calm_gradient_bounded_forward_unbounded(T):
    """|dL_c/dl^s_c| <= ln((1-1e-7)/1e-7)/T for reverse CALM; forward CALM exceeds it on the same inputs."""
    g = torch.Generator().manual_seed(int(T * 10))
    n = 4000
    # Student chunk probabilities from 1e-9 up to just below the upper clamp, teachers across (0, 1).
    s_prob = torch.cat([torch.rand(n - 4, generator=g, dtype=torch.float64),
                        torch.tensor([1 - 2e-7, 1 - 5e-7, 1e-9, 0.5], dtype=torch.float64)])
    t_prob = torch.cat([torch.rand(n - 4, generator=g, dtype=torch.float64) ** 8,
                        torch.tensor([1e-8, 1e-6, 0.9, 1 - 1e-9], dtype=torch.float64)])
    s_ll = (T * torch.log(s_prob.clamp_min(1e-30))).float().reshape(1, n)
    t_ll = (T * torch.log(t_prob.clamp_min(1e-30))).float().reshape(1, n)
    active = torch.ones(1, n, dtype=torch.bool)
    grads = {}
    for reverse in (True, False):
        leaf = s_ll.clone().requires_grad_()
        (n * calm_loss(leaf, t_ll, active, T, reverse=reverse)).backward()  # n*mean = sum of per-chunk L_c
        grads[reverse] = leaf.grad
    assert torch.isfinite(grads[True]).all()
    assert grads[True].abs().max().item() <= BOUND / T * (1 + 1e-5)
    assert grads[True].abs().max().item() > 0.5 * BOUND / T  # the bound is nearly reached (s ~ 1, t ~ 1e-7)
    assert grads[False].abs().max().item() > 1000 * BOUND / T


def naive_calm64(s_logits, x0, s_chunk, t_logp, t_chunk, active, T, reverse, C):
    """Dense one-hot chunk matrices (§5.3) and float64 autograd: an independent reference."""
    ls = torch.log_softmax(s_logits, -1).gather(-1, x0.unsqueeze(-1)).squeeze(-1)
    A_s = torch.nn.functional.one_hot(s_chunk.clamp_min(0), C).double() * (s_chunk >= 0).unsqueeze(-1)
    A_t = torch.nn.functional.one_hot(t_chunk.clamp_min(0), C).double() * (t_chunk >= 0).unsqueeze(-1)
    s_ll = torch.einsum("bl,blc->bc", ls, A_s)
    t_ll = torch.einsum("bl,blc->bc", t_logp, A_t)
    s = torch.exp(s_ll / T).clamp(LO, HI)
    t = torch.exp(t_ll / T).clamp(LO, HI)
    L = -(s * t.log() + (1 - s) * (1 - t).log()) if reverse else -(t * s.log() + (1 - t) * (1 - s).log())
    return (L * active).sum() / max(1, int(active.sum()))


def _random_chunks(b, L, C, g):
    """Disjoint contiguous chunks: each sequence cuts [0, L) into spans, some left out (-1)."""
    ids = torch.full((b, L), -1, dtype=torch.long)
    for i in range(b):
        cuts = sorted(torch.randperm(L - 1, generator=g)[: C].add(1).tolist())
        bounds = [0] + cuts + [L]
        c = 0
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            if c < C and torch.rand(1, generator=g).item() < 0.85:
                ids[i, lo:hi] = c
                c += 1
    return ids


@pytest.mark.parametrize("b,L,Lt,V,C", [(1, 6, 5, 7, 3), (3, 12, 15, 33, 5)])
@pytest.mark.parametrize("reverse", [True, False])
def test_calm_chain_matches_dense_float64(b, L, Lt, V, C, reverse):
    g = torch.Generator().manual_seed(b * 31 + L)
    logits = (0.5 * torch.randn(b, L, V, generator=g)).requires_grad_()
    x0 = torch.randint(0, V, (b, L), generator=g)
    s_chunk, t_chunk = _random_chunks(b, L, C, g), _random_chunks(b, Lt, C, g)
    t_logp = -0.3 * torch.rand(b, Lt, generator=g)
    active = torch.rand(b, C, generator=g) < 0.7
    T = 2.0
    s_ll = chunk_loglik(token_logprobs(logits, x0), s_chunk, C)
    loss = calm_loss(s_ll, chunk_loglik(t_logp, t_chunk, C), active, T, reverse)
    loss.backward()
    l64 = logits.detach().double().requires_grad_()
    ref = naive_calm64(l64, x0, s_chunk, t_logp.double(), t_chunk, active, T, reverse, C)
    ref.backward()
    torch.testing.assert_close(loss.double(), ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(logits.grad.double(), l64.grad, rtol=1e-4, atol=1e-6)


def test_chunk_tidal_grad_matches_float64():
    g = torch.Generator().manual_seed(3)
    s_ll = (-3 * torch.rand(2, 4, generator=g)).requires_grad_()
    t_ll = -3 * torch.rand(2, 4, generator=g)
    lam, omega = torch.tensor([0.2, 0.7]), torch.tensor([1.0, 0.4])
    active = torch.tensor([[True, False, True, True], [True, True, False, True]])
    for reverse in (False, True):
        leaf = s_ll.detach().clone().requires_grad_()
        loss = chunk_tidal_loss(leaf, t_ll, active, lam, omega, 2.0, reverse)
        loss.backward()
        l64 = s_ll.detach().double().requires_grad_()
        s, t = torch.exp(l64 / 2).clamp(LO, HI), torch.exp(t_ll.double() / 2).clamp(LO, HI)
        mu = ((1 - lam.double()[:, None]) * s.detach() + lam.double()[:, None] * t).clamp(LO, HI)
        Lc = -(s * mu.log() + (1 - s) * (1 - mu).log()) if reverse else -(mu * s.log() + (1 - mu) * (1 - s).log())
        ref = (Lc * omega.double()[:, None] * active).sum() / int(active.sum())
        ref.backward()
        torch.testing.assert_close(loss.double(), ref, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(leaf.grad.double(), l64.grad, rtol=1e-4, atol=1e-7)


def test_bad_chunk_ids_raise():
    with pytest.raises(ValueError, match="chunk ids"):
        chunk_loglik(torch.zeros(1, 3), torch.tensor([[0, 2, -1]]), 2)
    with pytest.raises(ValueError, match="active must be bool"):
        calm_loss(torch.zeros(1, 2), torch.zeros(1, 2), torch.ones(1, 2))


@pytest.mark.parametrize("reverse", [True, False])
def test_hard_clamp_gives_zero_gradient_outside_range(reverse):
    """§9.13: chunk probabilities outside [1e-7, 1-1e-7] are clamped with zero gradient (no smooth log1mexp)."""
    s_ll = torch.tensor([[0.0, -100.0, -1.0]], requires_grad=True)  # s = 1 (above), s = e^-20 (below), inside
    t_ll = torch.tensor([[-0.5, -0.5, -0.5]])
    calm_loss(s_ll, t_ll, torch.ones(1, 3, dtype=torch.bool), 5.0, reverse).backward()
    assert s_ll.grad[0, 0].item() == 0.0 and s_ll.grad[0, 1].item() == 0.0
    assert s_ll.grad[0, 2].item() != 0.0

"""TIDAL (§3) and token KL (§6): spec vectors §11.1-11.3 and float64 autograd of the naive formulas."""

import pytest
import torch

from tide_megatron.losses.kl import kl_loss
from tide_megatron.losses.tidal import TidalSchedule, tidal_loss

ZS = torch.tensor([[1.0, 0.0, -1.0]])
ZT = torch.tensor([[0.0, 2.0, 0.0]])


@pytest.mark.parametrize("step,decay,expected", [
    (0, "cosine", 0.1), (250, "cosine", 0.217157), (500, "cosine", 0.5), (750, "cosine", 0.782843),
    (1000, "cosine", 0.9), (250, "linear", 0.3)])
def test_lambda_train_vectors_11_1(step, decay, expected):
    assert TidalSchedule(decay=decay).lambda_train(step, 1000) == pytest.approx(expected, abs=1e-6)


def test_lambda_axes_and_omega_vectors_11_1():
    t = torch.tensor([0.001, 0.3, 0.5, 0.9])
    both = TidalSchedule(axis_mode="both").lam(t, 250, 1000)
    train = TidalSchedule(axis_mode="training_only").lam(t, 250, 1000)
    tstep = TidalSchedule(axis_mode="timestep_only").lam(t, 250, 1000)
    omega = TidalSchedule(timestep_weight="midrange").omega(t)
    torch.testing.assert_close(both, torch.tensor([0.216940, 0.152010, 0.108579, 0.021716]), rtol=0, atol=1e-6)
    torch.testing.assert_close(train, torch.full((4,), 0.217157), rtol=0, atol=1e-6)
    torch.testing.assert_close(tstep, torch.tensor([0.899100, 0.63, 0.45, 0.09]), rtol=0, atol=1e-6)
    torch.testing.assert_close(omega, torch.tensor([0.003953, 0.411112, 1.0, 0.028566]), rtol=0, atol=1e-6)
    torch.testing.assert_close(TidalSchedule().omega(t), torch.ones(4))
    # Mean of the midrange weight over t ~ U(0, 1) is about 0.376 (§3.5).
    grid = (torch.arange(200000, dtype=torch.float64) + 0.5) / 200000
    mean = TidalSchedule(timestep_weight="midrange").omega(grid).double().mean().item()
    assert mean == pytest.approx(0.376, abs=1e-3)


def test_schedule_validation():
    with pytest.raises(ValueError, match="axis_mode"):
        TidalSchedule(axis_mode="timestep")
    with pytest.raises(ValueError, match="decay"):
        TidalSchedule(decay="exp")
    with pytest.raises(ValueError, match="timestep_weight"):
        TidalSchedule(timestep_weight="mid")
    with pytest.raises(ValueError, match="lambda_max"):
        TidalSchedule(lambda_max=1.5)


def test_tidal_vector_11_2():
    zs = ZS.clone().requires_grad_()
    loss = tidal_loss(zs, ZT, 0.25, temperature=2.0)
    assert loss.item() == pytest.approx(0.057872, abs=1e-6)
    loss.backward()
    torch.testing.assert_close(zs.grad, torch.tensor([[0.163655, -0.135118, -0.028536]]), rtol=0, atol=1e-6)
    lam = TidalSchedule().lam(torch.tensor([0.3]), 250, 1000)
    assert lam.item() == pytest.approx(0.152010, abs=1e-6)
    assert tidal_loss(ZS, ZT, lam).item() == pytest.approx(0.021387, abs=1e-6)
    omega = TidalSchedule(timestep_weight="midrange").omega(torch.tensor([0.3]))
    assert tidal_loss(ZS, ZT, lam, omega).item() == pytest.approx(0.008792, abs=1e-6)


def test_kl_vectors_11_3():
    assert kl_loss(ZS, ZT, 2.0).item() == pytest.approx(0.819767, abs=1e-6)
    assert kl_loss(ZS, ZT, 2.0, reverse=True).item() == pytest.approx(0.896230, abs=1e-6)


def test_empty_rows_are_zero():
    zs = torch.zeros(0, 5, requires_grad=True)
    for loss in (tidal_loss(zs, torch.zeros(0, 5), 0.3), kl_loss(zs, torch.zeros(0, 5)),
                 kl_loss(zs, torch.zeros(0, 5), reverse=True)):
        assert loss.item() == 0.0
        loss.backward()


def naive_tidal64(zs, zt, lam, omega, T):
    """§3.3-3.6 written directly in float64 autograd."""
    r = torch.softmax((1 - lam[:, None]) * zs / T + lam[:, None] * zt / T, -1).detach()
    kl = (r * (torch.log(r.clamp_min(1e-8)) - torch.log_softmax(zs / T, -1))).sum(-1)
    return T * T * (omega * kl).sum() / max(1, zs.shape[0])


def naive_kl64(zs, zt, T, reverse):
    ls, lt = torch.log_softmax(zs / T, -1), torch.log_softmax(zt / T, -1)
    kl = (ls.exp() * (ls - lt)).sum(-1) if reverse else (lt.exp() * (lt - ls)).sum(-1)
    return T * T * kl.mean()


SHAPES = [(1, 2, None), (3, 17, 2), (7, 64, 3), (5, 300, 1)]


@pytest.mark.parametrize("n,V,chunk_rows", SHAPES)
@pytest.mark.parametrize("T", [1.0, 2.0, 0.7])
def test_tidal_matches_float64_autograd(n, V, chunk_rows, T):
    g = torch.Generator().manual_seed(n * 1000 + V)
    zs = (4 * torch.randn(n, V, generator=g)).requires_grad_()
    zt = 4 * torch.randn(n, V, generator=g)
    lam = torch.rand(n, generator=g)
    omega = torch.rand(n, generator=g)
    loss = tidal_loss(zs, zt, lam, omega, T, chunk_rows=chunk_rows)
    loss.backward()
    zs64 = zs.detach().double().requires_grad_()
    ref = naive_tidal64(zs64, zt.double(), lam.double(), omega.double(), T)
    ref.backward()
    torch.testing.assert_close(loss.double(), ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(zs.grad.double(), zs64.grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("n,V,chunk_rows", SHAPES)
@pytest.mark.parametrize("reverse", [False, True])
def test_kl_matches_float64_autograd(n, V, chunk_rows, reverse):
    g = torch.Generator().manual_seed(n * 7 + V)
    zs = (4 * torch.randn(n, V, generator=g)).requires_grad_()
    zt = 4 * torch.randn(n, V, generator=g)
    loss = kl_loss(zs, zt, 2.0, reverse=reverse, chunk_rows=chunk_rows)
    (3.0 * loss).backward()  # a non-unit upstream gradient
    zs64 = zs.detach().double().requires_grad_()
    ref = naive_kl64(zs64, zt.double(), 2.0, reverse)
    (3.0 * ref).backward()
    torch.testing.assert_close(loss.double(), ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(zs.grad.double(), zs64.grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("kind", ["tidal", "kl", "reverse_kl"])
def test_vocab_limit_equals_slicing_and_bf16(kind):
    g = torch.Generator().manual_seed(5)
    zs = (3 * torch.randn(6, 40, generator=g)).bfloat16().requires_grad_()
    zt = (3 * torch.randn(6, 40, generator=g)).bfloat16()
    before = zs.detach().clone()

    def run(a, b, **kw):
        if kind == "tidal":
            return tidal_loss(a, b, torch.full((6,), 0.4), **kw)
        return kl_loss(a, b, 2.0, reverse=kind == "reverse_kl", **kw)

    loss = run(zs, zt, vocab_limit=29, chunk_rows=4)
    loss.backward()
    assert loss.dtype == torch.float32 and zs.grad.dtype == torch.bfloat16
    assert torch.equal(zs.detach(), before)
    assert torch.count_nonzero(zs.grad[:, 29:]) == 0
    zs64 = zs.detach()[:, :29].double().requires_grad_()
    if kind == "tidal":
        ref = naive_tidal64(zs64, zt[:, :29].double(), torch.full((6,), 0.4, dtype=torch.float64),
                            torch.ones(6, dtype=torch.float64), 2.0)
    else:
        ref = naive_kl64(zs64, zt[:, :29].double(), 2.0, kind == "reverse_kl")
    ref.backward()
    torch.testing.assert_close(loss.double(), ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(zs.grad[:, :29].double(), zs64.grad, rtol=2e-2, atol=1e-4)


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="one shape"):
        kl_loss(torch.randn(2, 5), torch.randn(2, 6))
    with pytest.raises(ValueError, match="vocab_limit"):
        kl_loss(torch.randn(2, 5), torch.randn(2, 5), vocab_limit=6)
    with pytest.raises(ValueError, match="temperature"):
        kl_loss(torch.randn(2, 5), torch.randn(2, 5), temperature=0.0)


def test_tidal_divides_by_row_count_not_sum_of_omega():
    """§9.9: L_TIDAL = T^2 * sum(omega * KL) / |K|, so halving every omega halves the loss."""
    zs, zt = torch.randn(4, 9), torch.randn(4, 9)
    full = tidal_loss(zs, zt, 0.3, torch.ones(4))
    half = tidal_loss(zs, zt, 0.3, torch.full((4,), 0.5))
    assert half.item() == pytest.approx(0.5 * full.item(), rel=1e-6)
    one_row = tidal_loss(zs[:1], zt[:1], 0.3)
    with_zero = tidal_loss(zs[:2], zt[:2], 0.3, torch.tensor([1.0, 0.0]))
    assert with_zero.item() == pytest.approx(one_row.item() / 2, rel=1e-5)

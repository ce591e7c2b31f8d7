"""Every loss on vocab-parallel logits (TP=2, gloo) equals the unsharded loss in value and gradient."""

import warnings

import pytest
import torch
import torch.distributed as dist

from tide_megatron.align.rows import aligned_rows, masked_rows
from tide_megatron.align.masking import chunk_consistent_masking
from tide_megatron.diffusion.noise import IGNORE_INDEX
from tide_megatron.distributed import ParallelLayout, build_model_grid
from tide_megatron.losses import (
    LossInputs,
    MODES,
    ObjectiveConfig,
    bd3lm_ce,
    build_objective,
    kl_loss,
    logsumexp,
    tidal_loss,
    token_logprobs,
)

V = 14  # 7 columns per rank


@pytest.fixture(scope="module")
def tp():
    with build_model_grid(ParallelLayout(tp=2), name="losses") as grid:
        yield grid.pgs.tp, grid.tp_rank


def shard(x, rank):
    """Rank ``rank``'s columns in megatron-core's vocab-parallel layout."""
    v = x.shape[-1] // 2
    return x[..., rank * v:(rank + 1) * v]


def leaf(x):
    return x.detach().clone().requires_grad_()


def check(full_fn, shard_fn, full_logits, group, rank, atol=1e-6):
    """Run a loss on the full logits and on this rank's shard; compare value and the shard of the gradient."""
    a = leaf(full_logits)
    ref = full_fn(a)
    ref.backward()
    b = leaf(shard(full_logits, rank))
    got = shard_fn(b, group)
    got.backward()
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=atol)
    torch.testing.assert_close(b.grad, shard(a.grad, rank), rtol=1e-5, atol=atol)
    # Both ranks hold the same value.
    vals = [torch.zeros(()) for _ in range(2)]
    dist.all_gather(vals, got.detach(), group=group)
    assert vals[0].item() == vals[1].item()


def test_token_logprobs_and_ce(tp):
    group, rank = tp
    g = torch.Generator().manual_seed(0)
    logits = 3 * torch.randn(2, 5, V, generator=g)
    x0 = torch.randint(0, V, (2, 5), generator=g)
    masked = torch.rand(2, 5, generator=g) < 0.6
    maskable = masked | (torch.rand(2, 5, generator=g) < 0.5)
    t = torch.tensor([0.2, 0.7])
    check(lambda z: bd3lm_ce(z, x0, masked, maskable, t), lambda z, grp: bd3lm_ce(z, x0, masked, maskable, t, grp, 3),
          logits, group, rank)
    check(lambda z: (token_logprobs(z, x0) * torch.arange(5.0)).sum(),
          lambda z, grp: (token_logprobs(z, x0, grp, 1) * torch.arange(5.0)).sum(), logits, group, rank)
    torch.testing.assert_close(logsumexp(shard(logits, rank), group), torch.logsumexp(logits, -1))


def test_ce_matches_megatron_vocab_parallel_cross_entropy(tp):
    """megatron-core's own vocab-parallel CE (on the global TP group) as an independent reference."""
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel import vocab_parallel_cross_entropy

    group, rank = tp
    parallel_state.initialize_model_parallel(tensor_model_parallel_size=2)
    g = torch.Generator().manual_seed(1)
    logits = 3 * torch.randn(4, 3, V, generator=g)
    target = torch.randint(0, V, (4, 3), generator=g)
    a = leaf(shard(logits, rank))
    mc = vocab_parallel_cross_entropy(a.clone(), target)  # it works in place on its input
    mc.sum().backward()
    b = leaf(shard(logits, rank))
    ours = -token_logprobs(b, target, group)
    ours.sum().backward()
    torch.testing.assert_close(ours, mc, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(b.grad, a.grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("vocab_limit", [None, 11, 5])  # 5: rank 1 holds no shared column
@pytest.mark.parametrize("kind", ["tidal", "kl", "reverse_kl"])
def test_tidal_and_kl(tp, kind, vocab_limit):
    group, rank = tp
    g = torch.Generator().manual_seed(2)
    zs = 3 * torch.randn(9, V, generator=g)
    zt = 3 * torch.randn(9, V, generator=g)
    lam, omega = torch.rand(9, generator=g), torch.rand(9, generator=g)

    def run(z, teacher, grp):
        if kind == "tidal":
            return tidal_loss(z, teacher, lam, omega, 2.0, vocab_limit, grp, 4)
        return kl_loss(z, teacher, 2.0, kind == "reverse_kl", vocab_limit, grp, 4)

    check(lambda z: run(z, zt, None), lambda z, grp: run(z, shard(zt, rank), grp), zs, group, rank)


def _batch():
    g = torch.Generator().manual_seed(3)
    b, L, Lt, C = 2, 8, 9, 4
    d = dict(logits=2 * torch.randn(b, L, V, generator=g), x0=torch.randint(0, V, (b, L), generator=g),
             t=torch.tensor([0.3, 0.8]), teacher_logits=2 * torch.randn(b, Lt, V, generator=g),
             t_logp=-torch.rand(b, Lt, generator=g))
    maskable = torch.ones(b, L, dtype=torch.bool)
    maskable[:, :2] = False
    masked = maskable & (torch.rand(b, L, generator=g) < 0.6)
    masked[0, 3] = True
    d.update(maskable=maskable, masked=masked,
             pair_s=torch.tensor([[2, 3, 4, 5, 6, 0], [2, 3, 5, 6, 7, 0]]),
             pair_t=torch.tensor([[3, 4, 5, 6, 7, 0], [1, 2, 4, 5, 8, 0]]),
             pair_valid=torch.tensor([[True] * 5 + [False]] * 2),
             s_chunk=torch.tensor([[-1, -1, 0, 0, 1, 2, 2, 3], [-1, 0, 1, 1, 2, -1, 3, 3]]),
             t_chunk=torch.tensor([[-1, 0, 1, 1, 2, 3, -1, -1, -1], [0, 0, 1, 2, 2, 3, 3, -1, -1]]), C=C)
    return d


@pytest.mark.parametrize("mode", list(MODES) + ["taid_aligned+reverse_kl_aligned"])
def test_every_mode(tp, mode):
    group, rank = tp
    d = _batch()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        obj = build_objective(mode, ObjectiveConfig(shared_vocab=11, chunk_rows=2))
    spec = obj.components[0]
    if spec.chunk_level:
        cm = chunk_consistent_masking(d["masked"], d["s_chunk"], d["t_chunk"],
                                      torch.where(d["maskable"], d["x0"], IGNORE_INDEX), d["C"])

        def inputs(z, teacher_sharded):
            return LossInputs(z, d["x0"], cm.student_mask, d["maskable"], d["t"], student_chunk=d["s_chunk"],
                              teacher_chunk=d["t_chunk"], teacher_token_logp=d["t_logp"], active=cm.active)
    else:
        rows = aligned_rows(d["masked"], d["pair_s"], d["pair_t"], d["pair_valid"]) if spec.aligned \
            else masked_rows(d["masked"])
        teacher = d["teacher_logits"][rows.batch, rows.teacher_pos]

        def inputs(z, teacher_sharded):
            tr = shard(teacher, rank) if teacher_sharded else teacher[:, :11]  # full width [n, shared_vocab]
            return LossInputs(z, d["x0"], d["masked"], d["maskable"], d["t"], rows=rows, teacher_rows=tr)

    for teacher_sharded in (True, False):
        check(lambda z: obj(inputs(z, True) if spec.chunk_level else
                            LossInputs(z, d["x0"], d["masked"], d["maskable"], d["t"], rows=rows,
                                       teacher_rows=teacher), 300, 1000).total,
              lambda z, grp: obj(inputs(z, teacher_sharded), 300, 1000, grp).total, d["logits"], group, rank)

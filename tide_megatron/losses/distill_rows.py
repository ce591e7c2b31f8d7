"""Row-chunked fp32 kernel for the KL family on logit rows: forward KL, reverse KL, TIDAL (§3, §6, §9.21).

One autograd Function computes ``sum_i w_i * T^2 * KL_i`` over rows of student and teacher logits,
both possibly vocab-parallel. Rows are processed ``chunk_rows`` at a time: every fp32 temporary is
``[chunk_rows, V_local]``. The gradient w.r.t. the student logits is computed in the same pass and
kept as one ``[n, V_local]`` tensor in the *input* dtype (no fp32 [n, V] copies survive the forward).
The teacher is a constant (its forward runs under no_grad, §9.11), so it gets no gradient.

Per-row formulas, with ``u = z_s/T``, ``v = z_tau/T`` and ``p = softmax``:
- forward KL: ``KL(p_v || p_u)``, ``dL/dz_s = w*T*(p_u - p_v)``;
- reverse KL: ``KL(p_u || p_v)``, ``dL/dz_s = w*T*p_u*(log p_u - log p_v - KL)``;
- TIDAL: ``r = sg(softmax((1-lam)*u + lam*v))``, ``KL = sum r*(log max(r, 1e-8) - log p_u)``,
  ``dL/dz_s = w*T*(p_u - r)`` (§3.4, §3.8).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.distributed as dist

from tide_megatron.distributed.vocab_parallel import (
    ProcessGroup,
    all_reduce,
    default_chunk_rows,
    local_vocab_limit,
    row_chunks,
)

KINDS = ("forward_kl", "reverse_kl", "tidal")
TIDAL_LOG_CLAMP = math.log(1e-8)


def _log_softmax_(x: torch.Tensor, y: torch.Tensor, tmp: torch.Tensor, group: ProcessGroup) -> None:
    """In place: turn two fp32 ``[c, V_local]`` shards into global log-softmax rows (two all-reduces).

    ``tmp`` is a same-shape scratch buffer for the exponentials; nothing else is allocated at that size.
    """
    c = x.shape[0]
    if x.shape[1]:
        m = torch.stack([x.amax(dim=1), y.amax(dim=1)])
    else:
        m = torch.full((2, c), float("-inf"), dtype=torch.float32, device=x.device)
    all_reduce(m, dist.ReduceOp.MAX, group)
    x.sub_(m[0].unsqueeze(1))
    y.sub_(m[1].unsqueeze(1))
    s = torch.stack([torch.exp(x, out=tmp).sum(dim=1), torch.exp(y, out=tmp).sum(dim=1)])
    all_reduce(s, dist.ReduceOp.SUM, group)
    log_s = torch.log(s)
    x.sub_(log_s[0].unsqueeze(1))
    y.sub_(log_s[1].unsqueeze(1))


def _row_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``(a * b).sum(1)`` for ``[c, V]`` rows without a ``[c, V]`` temporary."""
    return torch.bmm(a.unsqueeze(1), b.unsqueeze(2)).view(-1)


class _RowDistill(torch.autograd.Function):
    @staticmethod
    def forward(ctx, student, teacher, row_weight, lam, temperature, kind, group, chunk_rows, vocab_limit):
        n, v_local = student.shape
        vl = local_vocab_limit(v_local, vocab_limit, group)
        rows = default_chunk_rows(v_local, chunk_rows)
        need_grad = ctx.needs_input_grad[0]
        grad = None
        if need_grad:
            grad = torch.empty_like(student)
            if vl < v_local:
                grad[:, vl:] = 0
        total = torch.zeros((), dtype=torch.float32, device=student.device)
        inv_t = 1.0 / temperature
        # Three fp32 [chunk, V_local] work buffers, reused by every chunk (no per-chunk allocation).
        work = torch.empty(3, min(rows, n), vl, dtype=torch.float32, device=student.device)
        for sl in row_chunks(n, rows):
            c = sl.stop - sl.start
            u = work[0, :c].copy_(student[sl, :vl].detach()).mul_(inv_t)
            v = work[1, :c].copy_(teacher[sl, :vl].detach()).mul_(inv_t)
            tmp = work[2, :c]
            w = row_weight[sl].float()
            if kind == "tidal":  # v <- lam*v + (1-lam)*u: the mixed logits; r is a constant target
                lam_c = lam[sl].float().unsqueeze(1)
                v.mul_(lam_c).addcmul_(u, 1.0 - lam_c)
            _log_softmax_(u, v, tmp, group)
            log_pu, log_pv = u, v
            if kind == "reverse_kl":
                p_u = torch.exp(log_pu, out=tmp)
                diff = log_pu.sub_(log_pv)  # log p_u - log p_v, in u's storage
                kl = _row_dot(p_u, diff)
            else:
                target = torch.exp(log_pv, out=tmp)
                if kind == "tidal":
                    log_pv.clamp_min_(TIDAL_LOG_CLAMP)
                kl = _row_dot(target, log_pv.sub_(log_pu))
            all_reduce(kl, dist.ReduceOp.SUM, group)
            total += (w * kl).sum() * (temperature * temperature)
            if need_grad:
                scale = (w * temperature).unsqueeze(1)
                if kind == "reverse_kl":
                    g = diff.sub_(kl.unsqueeze(1)).mul_(p_u).mul_(scale)
                else:
                    g = log_pu.exp_().sub_(target).mul_(scale)
                grad[sl, :vl] = g
        del work
        ctx.grad = grad
        return total

    @staticmethod
    def backward(ctx, grad_out):
        grad = ctx.grad
        if grad is None:
            raise RuntimeError("distillation loss: backward called twice (the gradient buffer is consumed once)")
        ctx.grad = None
        grad.mul_(grad_out)  # a 0-dim fp32 factor: applied in fp32 opmath, stored in the input dtype
        return grad, None, None, None, None, None, None, None, None


def check_rows(name: str, student: torch.Tensor, teacher: torch.Tensor) -> None:
    """Student and teacher rows must be ``[n, V_local]`` of the same shape."""
    if student.dim() != 2 or student.shape != teacher.shape:
        raise ValueError(f"{name}: student and teacher rows must both be [n, V_local] of one shape, "
                         f"got {tuple(student.shape)} and {tuple(teacher.shape)}")


def distill_rows(
    kind: str,
    student: torch.Tensor,
    teacher: torch.Tensor,
    row_weight: torch.Tensor,
    temperature: float,
    lam: Optional[torch.Tensor] = None,
    vocab_limit: Optional[int] = None,
    tp_group: ProcessGroup = None,
    chunk_rows: Optional[int] = None,
) -> torch.Tensor:
    """``T^2 * sum_i row_weight_i * KL_i`` for ``kind`` in ``KINDS``; fp32 scalar, gradient to ``student`` only."""
    if kind not in KINDS:
        raise ValueError(f"distill_rows: kind must be one of {KINDS}, got {kind!r}")
    check_rows(kind, student, teacher)
    if not temperature > 0:
        raise ValueError(f"{kind}: temperature must be > 0, got {temperature}")
    n = student.shape[0]
    if row_weight.shape != (n,):
        raise ValueError(f"{kind}: row weights must be [n] = [{n}], got {tuple(row_weight.shape)}")
    if kind == "tidal":
        if lam is None or lam.shape != (n,):
            raise ValueError(f"tidal: lam must be a per-row tensor [n] = [{n}]")
    else:
        lam = row_weight  # unused placeholder
    return _RowDistill.apply(student, teacher, row_weight.detach(), lam.detach(), float(temperature), kind,
                             tp_group, chunk_rows, vocab_limit)

"""Chunk-level losses of Pipeline A: CALM (forward), Reverse CALM (TIDE-Cross) and chunk-TIDAL (spec §5.5-5.8).

Chunks are sparse (docs/ARCHITECTURE.md): a per-token chunk id ``[b, L]`` (-1 = in no chunk). The chunk
log-likelihood ``l_c = sum_{j in c} log p(x0_j)`` is a scatter-add of token log-probs, never a dense
``[b, L, C]`` matmul. Chunk probabilities ``s_c = clamp(exp(l^s_c/T), 1e-7, 1-1e-7)`` (hard clamp: zero
gradient outside the range, §9.13) and likewise ``t_c``, all in fp32.
- forward BCE: ``L_c = -[t_c log s_c + (1-t_c) log(1-s_c)]``;
- reverse BCE: ``L_c = -[s_c log t_c + (1-s_c) log(1-t_c)]``, linear in s_c, so
  ``|dL_c/dl^s_c| = (s_c/T)|ln((1-t_c)/t_c)| <= ln((1-1e-7)/1e-7)/T``;
- the loss is ``sum_c act_c * L_c / max(1, sum_c act_c)`` over the micro-batch (no T^2).
"""

from __future__ import annotations

from typing import Optional

import torch

PROB_MIN = 1e-7
PROB_MAX = 1.0 - 1e-7


def chunk_loglik(token_logp: torch.Tensor, chunk_ids: torch.Tensor, num_chunks: int) -> torch.Tensor:
    """Per-chunk sums of token log-probs: fp32 ``[b, num_chunks]`` from ``[b, L]`` and chunk ids ``[b, L]``.

    Tokens with chunk id -1 contribute nothing; chunk columns that no token maps to stay 0.
    Differentiable w.r.t. ``token_logp`` (scatter_add).
    """
    if token_logp.shape != chunk_ids.shape or token_logp.dim() != 2:
        raise ValueError(f"chunk_loglik: token log-probs {tuple(token_logp.shape)} and chunk ids "
                         f"{tuple(chunk_ids.shape)} must both be [b, L]")
    if chunk_ids.numel() and (int(chunk_ids.max()) >= num_chunks or int(chunk_ids.min()) < -1):
        raise ValueError(f"chunk_loglik: chunk ids must be in [-1, {num_chunks}), got range "
                         f"[{int(chunk_ids.min())}, {int(chunk_ids.max())}]")
    in_chunk = chunk_ids >= 0
    src = token_logp.float().masked_fill(~in_chunk, 0.0)
    out = torch.zeros(token_logp.shape[0], num_chunks, dtype=torch.float32, device=token_logp.device)
    return out.scatter_add(1, chunk_ids.clamp_min(0), src)


def chunk_prob(loglik: torch.Tensor, temperature: float) -> torch.Tensor:
    """``clamp(exp(l/T), 1e-7, 1-1e-7)`` in fp32 (§5.6); the clamp is hard (zero gradient outside)."""
    return torch.exp(loglik.float() / temperature).clamp(PROB_MIN, PROB_MAX)


def _bce(target: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
    """``-[target*log(pred) + (1-target)*log(1-pred)]`` elementwise."""
    return -(target * torch.log(pred) + (1.0 - target) * torch.log1p(-pred))


def _masked_mean(per_chunk: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
    return per_chunk.masked_fill(~active, 0.0).sum() / max(1, int(active.sum()))


def _check(name: str, student_ll: torch.Tensor, teacher_ll: torch.Tensor, active: torch.Tensor, T: float) -> None:
    if student_ll.shape != teacher_ll.shape or student_ll.shape != active.shape or student_ll.dim() != 2:
        raise ValueError(f"{name}: student/teacher chunk log-likelihoods and active must all be [b, C], got "
                         f"{tuple(student_ll.shape)}, {tuple(teacher_ll.shape)}, {tuple(active.shape)}")
    if active.dtype != torch.bool:
        raise ValueError(f"{name}: active must be bool, got {active.dtype}")
    if not T > 0:
        raise ValueError(f"{name}: temperature must be > 0, got {T}")


def calm_loss(
    student_ll: torch.Tensor,
    teacher_ll: torch.Tensor,
    active: torch.Tensor,
    temperature: float = 5.0,
    reverse: bool = True,
) -> torch.Tensor:
    """Reverse CALM (``reverse=True``, mode ``reverse_alm``) or forward CALM (``alm``) over active chunks (§5.7).

    Args: chunk log-likelihoods ``[b, C]`` (student differentiable, teacher constant), ``active`` bool ``[b, C]``.
    Returns an fp32 scalar; 0 when no chunk is active.
    """
    _check("calm_loss", student_ll, teacher_ll, active, temperature)
    s = chunk_prob(student_ll, temperature)
    t = chunk_prob(teacher_ll.detach(), temperature)
    per_chunk = _bce(s, t) if reverse else _bce(t, s)
    return _masked_mean(per_chunk, active)


def chunk_tidal_loss(
    student_ll: torch.Tensor,
    teacher_ll: torch.Tensor,
    active: torch.Tensor,
    lam: torch.Tensor,
    omega: Optional[torch.Tensor] = None,
    temperature: float = 5.0,
    reverse: bool = False,
) -> torch.Tensor:
    """Chunk-level TIDAL (§5.8): ``mu_c = clamp(sg((1-lam) s_c + lam t_c))`` then forward or reverse BCE.

    ``lam`` and ``omega`` are per sequence ``[b]``; the sum ``sum_c act_c*omega_b*L_c`` is divided by
    ``max(1, sum act_c)``. Mode ``alm_taid`` is forward, ``reverse_alm_taid`` reverse.
    """
    _check("chunk_tidal_loss", student_ll, teacher_ll, active, temperature)
    b = student_ll.shape[0]
    if lam.shape != (b,) or (omega is not None and omega.shape != (b,)):
        raise ValueError(f"chunk_tidal_loss: lam and omega must be per sequence [b] = [{b}]")
    s = chunk_prob(student_ll, temperature)
    t = chunk_prob(teacher_ll.detach(), temperature)
    lam_c = lam.float().unsqueeze(1)
    mu = ((1.0 - lam_c) * s.detach() + lam_c * t).clamp(PROB_MIN, PROB_MAX)
    per_chunk = _bce(s, mu) if reverse else _bce(mu, s)
    if omega is not None:
        per_chunk = per_chunk * omega.float().unsqueeze(1)
    return _masked_mean(per_chunk, active)

"""CompDemo: complementary demonstration teacher passes, split, plan and merge (spec §4, §9.15).

The student's masked set M is split by independent Bernoulli draws ``u < ratio`` into M_A and M_B
(per token in Pipeline B, per chunk in Pipeline A). Pass 1 masks the teacher positions of M_B (M_A
shows ground truth as a demonstration), pass 2 masks those of M_A. Merge: pass-1 logits everywhere,
overwritten by pass-2 logits at the teacher positions of M_A. With nothing masked there is one pass.
The data stage plans the passes in its workers (`plan_*`); the teacher passes merge their payloads (`merge`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from tide_megatron.align.masking import project_chunk_set, project_mask_through_pairs

DEFAULT_DEMO_RATIO = 0.5


@dataclass
class CompDemoPlan:
    """Teacher masks for one or two passes and which teacher positions take pass-2 logits.

    ``passes`` holds one bool ``[b, L_t]`` teacher mask per pass (True = put the teacher mask id there);
    ``take_pass2`` is bool ``[b, L_t]`` or None for the single-pass fallback.
    """

    passes: list[torch.Tensor]
    take_pass2: Optional[torch.Tensor]

    @property
    def two_pass(self) -> bool:
        return len(self.passes) == 2


def _uniform(shape: torch.Size, u: Optional[torch.Tensor], generator: Optional[torch.Generator],
             device: torch.device, name: str) -> torch.Tensor:
    if u is None:
        return torch.rand(shape, generator=generator, device=device)
    if u.shape != shape:
        raise ValueError(f"compdemo: {name} draws u must have shape {tuple(shape)}, got {tuple(u.shape)}")
    return u


def _check_ratio(ratio: float) -> None:
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"compdemo: demo_ratio must be in [0, 1], got {ratio}")


def split(masked: torch.Tensor, ratio: float = DEFAULT_DEMO_RATIO, u: Optional[torch.Tensor] = None,
          generator: Optional[torch.Generator] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``M_A = M & (u < ratio)``, ``M_B = M & ~M_A`` for a bool set of tokens ``[b, L]`` or chunks ``[b, C]``."""
    _check_ratio(ratio)
    u = _uniform(masked.shape, u, generator, masked.device, "split")
    m_a = masked & (u < ratio)
    return m_a, masked & ~m_a


def _plan(teacher_a: torch.Tensor, teacher_b: torch.Tensor, any_masked: bool) -> CompDemoPlan:
    if not any_masked:
        return CompDemoPlan(passes=[teacher_a | teacher_b], take_pass2=None)
    return CompDemoPlan(passes=[teacher_b, teacher_a], take_pass2=teacher_a)


def plan_token_level(
    masked: torch.Tensor,
    pair_student: torch.Tensor,
    pair_teacher: torch.Tensor,
    pair_valid: torch.Tensor,
    teacher_len: int,
    ratio: float = DEFAULT_DEMO_RATIO,
    u: Optional[torch.Tensor] = None,
    generator: Optional[torch.Generator] = None,
) -> CompDemoPlan:
    """Token-level CompDemo (Pipeline B, §4.1-4.5) from the student mask ``[b, L]`` and the pair alignment."""
    m_a, m_b = split(masked, ratio, u, generator)
    to_t = lambda s: project_mask_through_pairs(s, pair_student, pair_teacher, pair_valid, teacher_len)  # noqa: E731
    return _plan(to_t(m_a), to_t(m_b), bool(masked.any()))


def plan_chunk_level(
    has_masked: torch.Tensor,
    teacher_chunk: torch.Tensor,
    ratio: float = DEFAULT_DEMO_RATIO,
    u: Optional[torch.Tensor] = None,
    generator: Optional[torch.Generator] = None,
) -> CompDemoPlan:
    """Chunk-level CompDemo (Pipeline A): split the chunks holding a masked token ``[b, C]``; student unchanged."""
    c_a, c_b = split(has_masked, ratio, u, generator)
    return _plan(project_chunk_set(teacher_chunk, c_a), project_chunk_set(teacher_chunk, c_b),
                 bool(has_masked.any()))


def merge(pass1: torch.Tensor, pass2: torch.Tensor, take_pass2: torch.Tensor, inplace: bool = False) -> torch.Tensor:
    """Pass-1 values, overwritten by pass-2 values where ``take_pass2`` (§4.4).

    Works on full logits ``[b, L_t, V]`` with a ``[b, L_t]`` mask, on gathered rows ``[n, V]`` with an ``[n]``
    mask, or on per-token log-probs ``[b, L_t]`` with a same-shape mask. ``inplace`` reuses pass 1's buffer.
    """
    if pass1.shape != pass2.shape:
        raise ValueError(f"compdemo.merge: pass shapes differ: {tuple(pass1.shape)} vs {tuple(pass2.shape)}")
    if take_pass2.shape != pass1.shape[: take_pass2.dim()] or take_pass2.dtype != torch.bool:
        raise ValueError(f"compdemo.merge: take_pass2 must be bool with leading shape of the passes "
                         f"{tuple(pass1.shape)}, got {take_pass2.dtype} {tuple(take_pass2.shape)}")
    out = pass1 if inplace else pass1.clone()
    out[take_pass2] = pass2[take_pass2]
    return out

"""The distilled positions K of the token-level modes (spec §2.4, §6): which student/teacher rows are compared.

Aligned modes: ``K = {k valid : masked[pair_student[k]]}``, each with its teacher position ``pair_teacher[k]``.
Unaligned modes (one template): every masked position, teacher position = student's. The teacher passes
request exactly these rows and the losses read exactly these rows (§9.21).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class DistilledRows:
    """Row k: sequence ``batch[k]``, student position ``student_pos[k]``, teacher position ``teacher_pos[k]``."""

    batch: torch.Tensor
    student_pos: torch.Tensor
    teacher_pos: torch.Tensor

    def __len__(self) -> int:
        return int(self.batch.numel())


def aligned_rows(masked: torch.Tensor, pair_student: torch.Tensor, pair_teacher: torch.Tensor,
                 pair_valid: torch.Tensor) -> DistilledRows:
    """K of §2.4 from the student mask ``[b, L]`` and the pair alignment ``[b, P]`` (padded pairs skipped)."""
    if not (pair_student.shape == pair_teacher.shape == pair_valid.shape) or pair_valid.dtype != torch.bool:
        raise ValueError("aligned_rows: pair_student, pair_teacher and bool pair_valid must share one [b, P] shape")
    keep = pair_valid & masked.gather(1, pair_student.clamp_min(0))
    batch, k = keep.nonzero(as_tuple=True)
    return DistilledRows(batch, pair_student[batch, k], pair_teacher[batch, k])


def masked_rows(masked: torch.Tensor) -> DistilledRows:
    """Every masked position, teacher position equal to the student's (unaligned modes, §6)."""
    batch, pos = masked.nonzero(as_tuple=True)
    return DistilledRows(batch, pos, pos)

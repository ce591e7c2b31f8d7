"""Distilled positions K for the token-level modes and row gathering (spec §2.4, §6, §9.21).

Aligned modes: ``K = {k valid : masked[pair_student[k]]}``, each with its teacher position
``pair_teacher[k]``. Unaligned modes (one template): every masked position, teacher position = student's.
Only these rows of logits are materialised for KL/TIDAL.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tide_megatron.losses.vocab_parallel import ProcessGroup, tp_size, vocab_start


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


def gather_rows(logits: torch.Tensor, batch: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """``logits[batch, pos]``: ``[b, L, V] -> [n, V]`` (differentiable)."""
    return logits[batch, pos]


def teacher_rows_to_shard(teacher_rows: torch.Tensor, student_local_vocab: int, tp_group: ProcessGroup) -> torch.Tensor:
    """Give teacher rows the student's vocab-parallel layout.

    Rows already ``[n, V_local]`` are taken as sharded like the student. Full-width rows (for example the
    teacher engine's ``[n, vocab_limit]``) are cut to this rank's columns and padded with zeros past their
    width; those padded columns lie beyond the shared-vocab limit and never enter the loss.
    """
    width = teacher_rows.shape[-1]
    if width == student_local_vocab:
        return teacher_rows
    if tp_size(tp_group) == 1 and width > student_local_vocab:
        raise ValueError(f"teacher rows have {width} columns, more than the student's {student_local_vocab}")
    start = vocab_start(student_local_vocab, tp_group)
    local = teacher_rows[:, start: start + student_local_vocab]
    if local.shape[1] < student_local_vocab:
        pad = local.new_zeros(local.shape[0], student_local_vocab - local.shape[1])
        local = torch.cat([local, pad], dim=1)
    return local

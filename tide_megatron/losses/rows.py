"""Logit rows at the distilled positions K (``align.rows``) in the student's vocab-parallel layout (§6, §9.21).

Only these rows of logits are materialised for KL/TIDAL.
"""

from __future__ import annotations

import torch

from tide_megatron.distributed.vocab_parallel import ProcessGroup, tp_size, vocab_start


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

"""Chunk-consistent masking, active chunks and mask projection onto teacher tokens, on sparse alignments.

Alignments follow docs/ARCHITECTURE.md: per-token chunk ids `student_chunk[b, L]` / `teacher_chunk[b, L_t]`
(int64, -1 = no chunk) with `C = max(num_chunks)` columns per sample, or pairs
`pair_student[b, P]`, `pair_teacher[b, P]`, `pair_valid[b, P]`. Everything here is a pure tensor function
(no Python loops over tokens), so it runs in DataLoader workers or on the device alike.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from tide_megatron.diffusion.noise import IGNORE_INDEX


def chunk_any(token_chunk: torch.Tensor, token_flag: torch.Tensor, num_cols: int) -> torch.Tensor:
    """`out[b, c] = any(token_flag[b, j] for j with token_chunk[b, j] == c)`, as bool [b, num_cols]."""
    b = token_chunk.shape[0]
    hit = (token_chunk >= 0) & token_flag.bool()
    flat = torch.zeros(b * num_cols + 1, dtype=torch.int32, device=token_chunk.device)
    rows = torch.arange(b, device=token_chunk.device).unsqueeze(1) * num_cols
    index = torch.where(hit, rows + token_chunk.clamp(min=0), torch.full_like(token_chunk, b * num_cols))
    flat.scatter_add_(0, index.reshape(-1), torch.ones(index.numel(), dtype=torch.int32, device=flat.device))
    return flat[:-1].view(b, num_cols) > 0


def chunk_flag_to_tokens(token_chunk: torch.Tensor, chunk_flag: torch.Tensor) -> torch.Tensor:
    """`out[b, j] = chunk_flag[b, token_chunk[b, j]]` for tokens in a chunk, False elsewhere."""
    if chunk_flag.shape[1] == 0:
        return torch.zeros_like(token_chunk, dtype=torch.bool)
    gathered = torch.gather(chunk_flag, 1, token_chunk.clamp(min=0))
    return gathered & (token_chunk >= 0)


class ChunkMasking(NamedTuple):
    student_mask: torch.Tensor  # bool [b, L]: the sampled mask expanded to whole chunks (§5.5 step 3)
    teacher_mask: torch.Tensor  # bool [b, L_t]: teacher tokens of chunks holding a masked student token (step 4)
    has_masked: torch.Tensor  # bool [b, C]
    active: torch.Tensor  # bool [b, C]: has_masked and no prompt token (step 5)


def chunk_consistent_masking(
    student_mask: torch.Tensor,
    student_chunk: torch.Tensor,
    teacher_chunk: torch.Tensor,
    labels: torch.Tensor,
    num_cols: int | None = None,
) -> ChunkMasking:
    """§5.5: expand the student mask to whole chunks, project it onto the teacher, and find active chunks.

    Only maskable tokens (label != -100) are added by the expansion (pitfall 8); chunks touching a prompt token
    are never active.
    """
    if num_cols is None:
        num_cols = int(max(student_chunk.max().item(), teacher_chunk.max().item(), -1)) + 1
    maskable = labels != IGNORE_INDEX
    has_masked = chunk_any(student_chunk, student_mask, num_cols)
    expanded = student_mask.bool() | (maskable & chunk_flag_to_tokens(student_chunk, has_masked))
    teacher_mask = chunk_flag_to_tokens(teacher_chunk, has_masked)
    has_prompt = chunk_any(student_chunk, ~maskable, num_cols)
    return ChunkMasking(expanded, teacher_mask, has_masked, has_masked & ~has_prompt)


def project_mask_through_pairs(
    student_mask: torch.Tensor,
    pair_student: torch.Tensor,
    pair_teacher: torch.Tensor,
    pair_valid: torch.Tensor,
    teacher_len: int,
) -> torch.Tensor:
    """§2.4: `teacher_mask[pair_teacher[k]] = student_mask[pair_student[k]]` for valid pairs only (pitfall 16)."""
    if not (pair_student.shape == pair_teacher.shape == pair_valid.shape):
        raise ValueError("pair_student, pair_teacher and pair_valid must share one [b, P] shape, got "
                         f"{tuple(pair_student.shape)}, {tuple(pair_teacher.shape)}, {tuple(pair_valid.shape)}")
    b = student_mask.shape[0]
    values = torch.gather(student_mask.bool(), 1, pair_student.clamp(min=0)) & pair_valid.bool()
    out = torch.zeros(b, teacher_len + 1, dtype=torch.bool, device=student_mask.device)
    index = torch.where(pair_valid.bool(), pair_teacher, torch.full_like(pair_teacher, teacher_len))
    out.scatter_(1, index, values)
    out[:, teacher_len] = False
    return out[:, :teacher_len]


def project_chunk_set(teacher_chunk: torch.Tensor, chunk_set: torch.Tensor) -> torch.Tensor:
    """Teacher tokens of the chunks in `chunk_set` (bool [b, C]); used for CompDemo's chunk-level passes (§4)."""
    return chunk_flag_to_tokens(teacher_chunk, chunk_set.bool())

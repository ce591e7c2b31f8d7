"""One noised micro-batch as a training step reads it, built from the alignment stage's output (``data/stage.py``).

The stage (collation §1.2, noising §1.3, chunk-consistent masking §5.5 or pair projection §2.4, CompDemo
passes §4) runs in DataLoader workers and returns a dict of tensors; `DistillBatch.from_stage` names
those tensors the way the step reads them (``teacher.passes`` for the teacher's inputs, the trainer for
the student's), and stacks the teacher passes so CompDemo's two passes go through the teacher as one batch.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Optional

import torch

from tide_megatron.diffusion.noise import IGNORE_INDEX


@dataclass
class DistillBatch:
    """A noised micro-batch. Student tensors ``[b, L]``; teacher tensors ``[b, L_t]``; passes ``[P, b, L_t]``."""

    x0: torch.Tensor  # int64 [b, L] clean student ids
    labels: torch.Tensor  # int64 [b, L], -100 = prompt / padding
    t: torch.Tensor  # fp32 [b]
    masked: torch.Tensor  # bool [b, L] (chunk-expanded in pipeline A, §9.8)
    xt: torch.Tensor  # int64 [b, L]
    teacher_ids: Optional[torch.Tensor] = None  # int64 [b, L_t] clean teacher ids
    teacher_attention: Optional[torch.Tensor] = None  # bool [b, L_t], True = real token
    teacher_pass_masks: Optional[torch.Tensor] = None  # bool [P, b, L_t]: where MASK_t goes in each pass
    take_pass2: Optional[torch.Tensor] = None  # bool [b, L_t] or None (single pass)
    student_pass2: Optional[torch.Tensor] = None  # bool [b, L]: CompDemo's M_A in student positions (token level)
    student_chunk: Optional[torch.Tensor] = None  # int64 [b, L]
    teacher_chunk: Optional[torch.Tensor] = None  # int64 [b, L_t]
    active: Optional[torch.Tensor] = None  # bool [b, C]
    pair_student: Optional[torch.Tensor] = None  # int64 [b, P]
    pair_teacher: Optional[torch.Tensor] = None
    pair_valid: Optional[torch.Tensor] = None  # bool [b, P]
    index: Optional[torch.Tensor] = None  # int64 [b]: the samples' dataset indices
    epoch: Optional[int] = None  # the epoch whose noise the batch carries (noise is seeded per seed, epoch, sample)

    @property
    def maskable(self) -> torch.Tensor:
        return self.labels != IGNORE_INDEX

    @property
    def num_passes(self) -> int:
        return 0 if self.teacher_pass_masks is None else int(self.teacher_pass_masks.shape[0])

    def to(self, device: torch.device, non_blocking: bool = False) -> "DistillBatch":
        """Every tensor of the batch on ``device`` (``non_blocking`` copies from pinned memory overlap compute);
        ``epoch`` stays a Python int."""
        moved = {f.name: getattr(self, f.name).to(device, non_blocking=non_blocking)
                 for f in fields(self) if isinstance(getattr(self, f.name), torch.Tensor)}
        return replace(self, **moved)

    @classmethod
    def from_stage(cls, out: dict[str, torch.Tensor]) -> "DistillBatch":
        """Name the stage's tensors; CompDemo's passes (pass 1 masks B, pass 2 masks A and wins on A, §4)."""
        batch = cls(x0=out["input_ids"], labels=out["labels"], t=out["t"].float(), masked=out["student_mask"],
                    xt=out["student_noised_ids"], index=out.get("index"),
                    epoch=int(out["epoch"]) if "epoch" in out else None)
        if "teacher_ids" not in out:
            return batch
        batch.teacher_ids = out["teacher_ids"]
        batch.teacher_attention = out["teacher_attention_mask"].bool()
        if "demo_teacher_mask_a" in out:
            a, b = out["demo_teacher_mask_a"], out["demo_teacher_mask_b"]
            batch.teacher_pass_masks = torch.stack([b, a])
            batch.take_pass2 = a
            batch.student_pass2 = out.get("demo_student_mask_a")
        else:
            batch.teacher_pass_masks = out["teacher_mask"][None]
        if "student_chunk" in out:
            batch.student_chunk, batch.teacher_chunk = out["student_chunk"], out["teacher_chunk"]
            batch.active = out["active_chunks"]
        if "pair_student" in out:
            batch.pair_student, batch.pair_teacher = out["pair_student"], out["pair_teacher"]
            batch.pair_valid = out["pair_valid"].bool()
        return batch

"""One micro-batch, from dataset samples to everything a TIDE step needs (runs in DataLoader workers).

Order, as the spec's data flow (DESIGN §1): collate the student side (§1.2) → draw t and the token
mask (§1.3) → chunk-consistent masking and active chunks (§5.5, pipeline A) or the distilled pairs
(§2.4, pipeline B) → CompDemo's split into one or two teacher passes (§4) → the teacher input ids of
every pass. The randomness of a batch comes only from its own seed, so a batch is the same whichever
worker builds it and after a resume.

A sample is a dict: ``student_ids``, ``student_labels`` (prompt = -100), ``teacher_ids``, and either
``student_chunk``/``teacher_chunk`` (per-token chunk ids, -1 = none; pipeline A) or ``pairs``
(``[(student_pos, teacher_pos), ...]``; pipeline B). The teacher side is already cut (§2.3, §2.4).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Optional, Sequence

import torch

from tide_megatron.diffusion.collate import collate_student
from tide_megatron.diffusion.noise import IGNORE_INDEX, mask_tokens, sample_t
from tide_megatron.losses import compdemo
from tide_megatron.losses.calm import chunk_masking


@dataclass
class TokenIds:
    """Special ids the batch builder writes (spec §9.1: never mix student and teacher mask ids)."""

    student_mask: int
    student_eos: int
    student_pad: int
    teacher_mask: int
    teacher_pad: int
    teacher_eos: int


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
    student_chunk: Optional[torch.Tensor] = None  # int64 [b, L]
    teacher_chunk: Optional[torch.Tensor] = None  # int64 [b, L_t]
    active: Optional[torch.Tensor] = None  # bool [b, C]
    pair_student: Optional[torch.Tensor] = None  # int64 [b, P]
    pair_teacher: Optional[torch.Tensor] = None
    pair_valid: Optional[torch.Tensor] = None  # bool [b, P]
    extra: dict = field(default_factory=dict)

    @property
    def maskable(self) -> torch.Tensor:
        return self.labels != IGNORE_INDEX

    @property
    def num_passes(self) -> int:
        return 0 if self.teacher_pass_masks is None else int(self.teacher_pass_masks.shape[0])

    def teacher_pass_ids(self, mask_id: int) -> torch.Tensor:
        """Teacher ids of every pass, stacked along the batch: ``[P * b, L_t]`` (pass-major)."""
        ids = torch.where(self.teacher_pass_masks, torch.full_like(self.teacher_ids, mask_id)[None],
                          self.teacher_ids[None])
        return ids.reshape(-1, ids.shape[-1])

    def pin_memory(self) -> "DistillBatch":
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, torch.Tensor):
                setattr(self, f.name, value.pin_memory())
        return self


def _pad_2d(rows: Sequence[Sequence[int]], width: int, fill: int) -> torch.Tensor:
    out = torch.full((len(rows), width), fill, dtype=torch.long)
    for i, r in enumerate(rows):
        r = list(r)[:width]
        if r:
            out[i, : len(r)] = torch.tensor(r, dtype=torch.long)
    return out


class DistillCollator:
    """Collate + noise + project onto the teacher (the alignment stage of a training step).

    ``level``: "chunk" (different tokenizers, pipeline A), "pair" (shared tokenizer, pipeline B) or
    "none" (CE only). Picklable, so it runs inside DataLoader workers.
    """

    def __init__(self, ids: TokenIds, seq_length: int, block_size: int, level: str, compdemo: bool = False,
                 demo_ratio: float = 0.5, time_epsilon: float = 1e-3, teacher_max_length: int = 1024,
                 teacher_block_multiple: int = 1) -> None:
        if level not in ("chunk", "pair", "none"):
            raise ValueError(f"DistillCollator: level must be chunk|pair|none, got {level!r}")
        self.ids, self.L, self.block = ids, seq_length, block_size
        self.level, self.compdemo, self.demo_ratio, self.eps = level, compdemo, demo_ratio, time_epsilon
        self.teacher_max_length = teacher_max_length
        self.teacher_block_multiple = teacher_block_multiple

    def __call__(self, items: Sequence[tuple[int, dict]]) -> DistillBatch:
        """``items``: ``(batch_seed, sample)`` pairs (every item of a batch carries the same seed)."""
        seed = int(items[0][0])
        samples = [s for _, s in items]
        gen = torch.Generator().manual_seed(seed)
        x0, labels = collate_student([(s["student_ids"], s["student_labels"]) for s in samples], self.L, self.block,
                                     self.ids.student_eos, self.ids.student_pad)
        t = sample_t(len(samples), self.eps, generator=gen)
        xt, masked = mask_tokens(x0, labels, t, self.ids.student_mask, generator=gen)
        batch = DistillBatch(x0=x0, labels=labels, t=t, masked=masked, xt=xt)
        if self.level == "none":
            return batch
        self._teacher_side(batch, samples)
        if self.level == "chunk":
            self._chunk_level(batch, samples, gen)
        else:
            self._pair_level(batch, samples, gen)
        return batch

    def _teacher_side(self, batch: DistillBatch, samples: Sequence[dict]) -> None:
        """Teacher ids cut to the maximum length, eos-filled to the block multiple (§2.4), batch-padded."""
        rows, lengths = [], []
        for s in samples:
            ids = list(s["teacher_ids"])[: self.teacher_max_length]
            fill = -len(ids) % self.teacher_block_multiple
            ids += [self.ids.teacher_eos] * fill
            rows.append(ids)
            lengths.append(len(ids))
        width = max(lengths)
        width += -width % self.teacher_block_multiple
        batch.teacher_ids = _pad_2d(rows, width, self.ids.teacher_pad)
        batch.teacher_attention = torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]

    def _chunk_level(self, batch: DistillBatch, samples: Sequence[dict], gen: torch.Generator) -> None:
        """§5.5: expand the mask to whole chunks; the teacher masks the tokens of chunks holding a mask."""
        Lt = batch.teacher_ids.shape[1]
        student_chunk = _pad_2d([s["student_chunk"] for s in samples], self.L, -1)
        teacher_chunk = _pad_2d([s["teacher_chunk"] for s in samples], Lt, -1)
        # A chunk cut by the teacher length is dropped on both sides, not silently truncated (§9.18).
        teacher_chunk = teacher_chunk.masked_fill(~batch.teacher_attention, -1)
        num_chunks = int(max(int(student_chunk.max()), int(teacher_chunk.max()), -1)) + 1
        complete = self._chunks_present_on_both_sides(student_chunk, teacher_chunk, num_chunks)
        student_chunk = torch.where(complete.gather(1, student_chunk.clamp_min(0)) & (student_chunk >= 0),
                                    student_chunk, -1)
        teacher_chunk = torch.where(complete.gather(1, teacher_chunk.clamp_min(0)) & (teacher_chunk >= 0),
                                    teacher_chunk, -1)
        cm = chunk_masking(batch.masked, batch.maskable, student_chunk, teacher_chunk, num_chunks)
        batch.masked = cm.student_masked
        batch.xt = torch.where(cm.student_masked, self.ids.student_mask, batch.x0)
        batch.student_chunk, batch.teacher_chunk, batch.active = student_chunk, teacher_chunk, cm.active
        if self.compdemo:
            plan = compdemo.plan_chunk_level(cm.has_masked, teacher_chunk, self.demo_ratio, generator=gen)
            batch.teacher_pass_masks = torch.stack(plan.passes)
            batch.take_pass2 = plan.take_pass2
        else:
            batch.teacher_pass_masks = cm.teacher_masked[None]

    @staticmethod
    def _chunks_present_on_both_sides(student_chunk, teacher_chunk, num_chunks) -> torch.Tensor:
        b = student_chunk.shape[0]
        present = torch.zeros(2, b, num_chunks + 1, dtype=torch.bool)
        for side, ids in enumerate((student_chunk, teacher_chunk)):
            idx = torch.where(ids >= 0, ids, num_chunks)
            present[side].scatter_(1, idx, True)
        return (present[0] & present[1])[:, :num_chunks]

    def _pair_level(self, batch: DistillBatch, samples: Sequence[dict], gen: torch.Generator) -> None:
        """§2.4: keep pairs inside both lengths; the teacher masks the partners of masked student tokens."""
        Lt = batch.teacher_ids.shape[1]
        pairs = [[(s_, t_) for s_, t_ in s["pairs"] if s_ < self.L and t_ < self.teacher_max_length]
                 for s in samples]
        P = max(1, max(len(p) for p in pairs))
        ps = torch.zeros(len(samples), P, dtype=torch.long)
        pt = torch.zeros_like(ps)
        pv = torch.zeros(len(samples), P, dtype=torch.bool)
        for i, p in enumerate(pairs):
            if p:
                ps[i, : len(p)] = torch.tensor([a for a, _ in p])
                pt[i, : len(p)] = torch.tensor([b for _, b in p])
                pv[i, : len(p)] = True
        batch.pair_student, batch.pair_teacher, batch.pair_valid = ps, pt, pv
        if self.compdemo:
            plan = compdemo.plan_token_level(batch.masked, ps, pt, pv, Lt, self.demo_ratio, generator=gen)
            batch.teacher_pass_masks = torch.stack(plan.passes)
            batch.take_pass2 = plan.take_pass2
        else:
            batch.teacher_pass_masks = compdemo.pairs_to_teacher(batch.masked, ps, pt, pv, Lt)[None]

"""Train-time alignment stage: collate samples, draw the student mask, build the teacher inputs (§1.2-1.3, §2.3-2.4, §4, §5.5).

`TideCollator` runs inside DataLoader workers (it is picklable and deterministic given its seed: every random
draw of a sample comes from a generator seeded by (seed, epoch, sample index), so results do not depend on the
worker count, the batch composition or prefetching). It returns the collated student batch, the sampled
and chunk-expanded student masks, the teacher ids clean and masked with their attention masks, and the sparse
alignment (per-token chunk ids or pairs). `AlignmentStage` is the mask-dependent part alone, usable on a
batch with any externally drawn student mask.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from tide_megatron.align.masking import (
    IGNORE_INDEX,
    chunk_consistent_masking,
    project_chunk_set,
    project_mask_through_pairs,
)


@dataclass
class StageConfig:
    """Token ids and lengths of one student/teacher pair; `from_meta` reads them from a dataset's meta.json."""

    student_mask_id: int
    student_eos_id: int
    student_pad_id: int
    teacher_mask_id: int
    teacher_eos_id: int
    teacher_pad_id: int
    align: Literal["chunks", "pairs"] = "chunks"
    student_len: int = 512
    block_size: int = 32
    teacher_fill_to_block: bool | None = None  # default: True for pairs (§2.4 collator), False for chunks (§2.3)
    time_epsilon: float = 1e-3
    compdemo_ratio: float | None = None  # set (e.g. 0.5) to also build the two CompDemo teacher passes (§4)

    def __post_init__(self) -> None:
        if self.student_len % self.block_size:
            raise ValueError(f"student_len {self.student_len} must be a multiple of block_size {self.block_size}")
        if self.align not in ("chunks", "pairs"):
            raise ValueError(f"align {self.align!r}: expected 'chunks' or 'pairs'")
        if self.teacher_fill_to_block is None:
            self.teacher_fill_to_block = self.align == "pairs"

    @classmethod
    def from_meta(cls, meta: dict, **overrides) -> "StageConfig":
        s, t = meta["student"], meta["teacher"]
        kw = dict(student_mask_id=s["mask_id"], student_eos_id=s["eos_id"], student_pad_id=s["pad_id"],
                  teacher_mask_id=t["mask_id"], teacher_eos_id=t["eos_id"], teacher_pad_id=t["pad_id"],
                  align=meta["config"]["align"], student_len=meta["config"]["student_max_len"])
        kw.update(overrides)
        return cls(**kw)


def _ceil_to(n: int, m: int) -> int:
    return -(-n // m) * m


def collate_samples(samples: list[dict], cfg: StageConfig) -> dict[str, torch.Tensor]:
    """§1.2 student collation (trained eos fill to a block multiple, then pad to student_len) and teacher padding."""
    b, L = len(samples), cfg.student_len
    ids = torch.full((b, L), cfg.student_pad_id, dtype=torch.long)
    labels = torch.full((b, L), IGNORE_INDEX, dtype=torch.long)
    t_lens = []
    for k, smp in enumerate(samples):
        n = min(len(smp["student_ids"]), L)
        filled = min(_ceil_to(n, cfg.block_size), L)
        ids[k, :n], labels[k, :n] = smp["student_ids"][:n], smp["student_labels"][:n]
        ids[k, n:filled] = cfg.student_eos_id
        labels[k, n:filled] = cfg.student_eos_id  # the eos fill is maskable and trained (§1.2 a)
        nt = len(smp["teacher_ids"])
        t_lens.append(_ceil_to(nt, cfg.block_size) if cfg.teacher_fill_to_block else nt)
    Lt = max(t_lens)
    t_ids = torch.full((b, Lt), cfg.teacher_pad_id, dtype=torch.long)
    t_att = torch.zeros((b, Lt), dtype=torch.bool)
    for k, smp in enumerate(samples):
        nt = len(smp["teacher_ids"])
        t_ids[k, :nt] = smp["teacher_ids"]
        t_ids[k, nt : t_lens[k]] = cfg.teacher_eos_id  # pairs mode: eos fill counts as real (§2.4)
        t_att[k, : t_lens[k]] = True
    out = {"input_ids": ids, "labels": labels, "teacher_ids": t_ids, "teacher_attention_mask": t_att,
           "index": torch.stack([torch.as_tensor(s["index"]) for s in samples])}
    if cfg.align == "chunks":
        out.update(_collate_chunks(samples, L, Lt))
    else:
        out.update(_collate_pairs(samples))
    return out


def _collate_chunks(samples: list[dict], L: int, Lt: int) -> dict[str, torch.Tensor]:
    b = len(samples)
    s_chunk = torch.full((b, L), -1, dtype=torch.long)
    t_chunk = torch.full((b, Lt), -1, dtype=torch.long)
    num = torch.zeros(b, dtype=torch.long)
    for k, smp in enumerate(samples):
        rows = smp["chunks"].view(-1, 4)
        num[k] = rows.shape[0]
        for c, (t0, t1, s0, s1) in enumerate(rows.tolist()):
            t_chunk[k, t0:t1] = c
            s_chunk[k, s0:s1] = c
    return {"student_chunk": s_chunk, "teacher_chunk": t_chunk, "num_chunks": num}


def _collate_pairs(samples: list[dict]) -> dict[str, torch.Tensor]:
    b = len(samples)
    P = max(1, max(s["pairs"].view(-1, 2).shape[0] for s in samples))
    ps = torch.zeros((b, P), dtype=torch.long)
    pt = torch.zeros((b, P), dtype=torch.long)
    valid = torch.zeros((b, P), dtype=torch.bool)
    for k, smp in enumerate(samples):
        rows = smp["pairs"].view(-1, 2)
        n = rows.shape[0]
        ps[k, :n], pt[k, :n], valid[k, :n] = rows[:, 0], rows[:, 1], True
    return {"pair_student": ps, "pair_teacher": pt, "pair_valid": valid, "n_aligned": valid.sum(1)}


def sample_student_mask(labels: torch.Tensor, generators: list[torch.Generator], eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """§1.3: t_b = eps + (1-eps)·u_b, then m = [u_i < t_b] ∧ maskable, one generator per sample."""
    b, L = labels.shape
    t = torch.empty(b)
    mask = torch.zeros(b, L, dtype=torch.bool)
    for k, g in enumerate(generators):
        t[k] = eps + (1 - eps) * torch.rand((), generator=g)
        mask[k] = (torch.rand(L, generator=g) < t[k]) & (labels[k] != IGNORE_INDEX)
    return t, mask


class AlignmentStage:
    """Given a collated batch and the student mask, build the teacher inputs and the alignment index tensors."""

    def __init__(self, cfg: StageConfig):
        self.cfg = cfg

    def __call__(self, batch: dict[str, torch.Tensor], student_mask: torch.Tensor,
                 generators: list[torch.Generator] | None = None) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        out: dict[str, torch.Tensor] = {"sampled_student_mask": student_mask}
        if cfg.align == "chunks":
            C = int(batch["num_chunks"].max().item()) if batch["num_chunks"].numel() else 0
            cm = chunk_consistent_masking(student_mask, batch["student_chunk"], batch["teacher_chunk"],
                                          batch["labels"], num_cols=C)
            out.update(student_mask=cm.student_mask, teacher_mask=cm.teacher_mask & batch["teacher_attention_mask"],
                       chunk_has_masked=cm.has_masked, active_chunks=cm.active)
        else:
            tm = project_mask_through_pairs(student_mask, batch["pair_student"], batch["pair_teacher"],
                                            batch["pair_valid"], batch["teacher_ids"].shape[1])
            distill = batch["pair_valid"] & torch.gather(student_mask, 1, batch["pair_student"])
            out.update(student_mask=student_mask, teacher_mask=tm, distill_pairs=distill)
        out["student_noised_ids"] = torch.where(out["student_mask"], cfg.student_mask_id, batch["input_ids"])
        out["teacher_input_ids"] = torch.where(out["teacher_mask"], cfg.teacher_mask_id, batch["teacher_ids"])
        if cfg.compdemo_ratio is not None:
            out.update(self._compdemo(batch, out, generators))
        return out

    def _compdemo(self, batch, out, generators) -> dict[str, torch.Tensor]:
        """§4: split masked units (chunks in A, positions in B) by u < ratio into A and B; pass 1 masks B, pass 2 A."""
        cfg = self.cfg
        if cfg.align == "chunks":
            units = out["chunk_has_masked"]
        else:
            units = out["student_mask"]
        u = torch.stack([torch.rand(units.shape[1], generator=g) for g in generators]) if generators else torch.rand(units.shape)
        in_a = units & (u < cfg.compdemo_ratio)
        in_b = units & ~in_a
        if cfg.align == "chunks":
            t_a, t_b = project_chunk_set(batch["teacher_chunk"], in_a), project_chunk_set(batch["teacher_chunk"], in_b)
        else:
            args = (batch["pair_student"], batch["pair_teacher"], batch["pair_valid"], batch["teacher_ids"].shape[1])
            t_a, t_b = project_mask_through_pairs(in_a, *args), project_mask_through_pairs(in_b, *args)
        t_ids = batch["teacher_ids"]
        return {"demo_teacher_mask_a": t_a, "demo_teacher_mask_b": t_b,
                "demo_pass1_ids": torch.where(t_b, cfg.teacher_mask_id, t_ids),  # masks B, shows A
                "demo_pass2_ids": torch.where(t_a, cfg.teacher_mask_id, t_ids)}  # masks A; its logits win on A


class TideCollator:
    """DataLoader `collate_fn`: collation, seeded student noising (§1.3) and the alignment stage, in the worker."""

    def __init__(self, cfg: StageConfig, seed: int = 42):
        self.cfg = cfg
        self.seed = seed
        self.epoch = 0
        self.stage = AlignmentStage(cfg)

    def set_epoch(self, epoch: int) -> None:
        """Change the noise stream per epoch (call before creating the epoch's iterator)."""
        self.epoch = epoch

    def _generators(self, index: torch.Tensor) -> list[torch.Generator]:
        gens = []
        for i in index.tolist():
            g = torch.Generator()
            g.manual_seed((self.seed * 1_000_003 + self.epoch * 7_919 + i) % (2**63 - 1))
            gens.append(g)
        return gens

    def __call__(self, samples: list[dict]) -> dict[str, torch.Tensor]:
        batch = collate_samples(samples, self.cfg)
        gens = self._generators(batch["index"])
        t, sampled = sample_student_mask(batch["labels"], gens, self.cfg.time_epsilon)
        batch["t"] = t
        batch.update(self.stage(batch, sampled, gens))
        return batch


def build_dataloader(dataset, cfg: StageConfig, batch_size: int, seed: int = 42, shuffle: bool = True,
                     num_workers: int = 0, prefetch_factor: int | None = 2, drop_last: bool = False,
                     sampler=None) -> torch.utils.data.DataLoader:
    """A DataLoader whose workers run `TideCollator`; shuffling is seeded, so the whole stream is reproducible."""
    gen = torch.Generator()
    gen.manual_seed(seed)
    kw = {"prefetch_factor": prefetch_factor, "persistent_workers": False} if num_workers > 0 else {}
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle if sampler is None else False, sampler=sampler,
        generator=gen if sampler is None else None, num_workers=num_workers, collate_fn=TideCollator(cfg, seed),
        drop_last=drop_last, **kw)

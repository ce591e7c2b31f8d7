"""Train-time alignment stage: collate samples, draw the student mask, project it onto the teacher (§1.2-1.3, §2.3-2.4, §4, §5.5).

`TideCollator` runs inside DataLoader workers (it is picklable and deterministic given its seed: every random
draw of a sample comes from a generator seeded by (seed, epoch, sample index), so results do not depend on the
worker count, the batch composition or prefetching). It returns the collated student batch, the sampled and
chunk-expanded student masks, the noised student ids, the clean teacher ids with their attention mask, where
the teacher is masked (one pass, or CompDemo's two), and the sparse alignment (per-token chunk ids or pairs).
`data.batch.DistillBatch.from_stage` names these for the step; the teacher's own inputs, with its own mask
id, are built from them by `teacher.passes`. `AlignmentStage` is the mask-dependent part alone, usable on a
batch with any externally drawn student mask.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from tide_megatron.align import compdemo
from tide_megatron.align.masking import chunk_consistent_masking, project_mask_through_pairs
from tide_megatron.diffusion.collate import collate_student
from tide_megatron.diffusion.noise import mask_tokens, sample_t


@dataclass
class StageConfig:
    """Token ids and lengths of one student/teacher pair; `from_meta` reads them from a dataset's meta.json.

    No teacher mask id: the stage only says where the teacher is masked; `teacher.passes` writes the id.
    """

    student_mask_id: int
    student_eos_id: int
    student_pad_id: int
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
                  teacher_eos_id=t["eos_id"], teacher_pad_id=t["pad_id"],
                  align=meta["config"]["align"], student_len=meta["config"]["student_max_len"])
        kw.update(overrides)
        return cls(**kw)


def _ceil_to(n: int, m: int) -> int:
    return -(-n // m) * m


def collate_samples(samples: list[dict], cfg: StageConfig) -> dict[str, torch.Tensor]:
    """§1.2 student collation (`diffusion.collate`: trained eos fill to a block multiple, then padding) and
    teacher padding: plain batch padding for chunks (§2.3), eos fill to a block multiple first for pairs (§2.4)."""
    ids, labels = collate_student([(s["student_ids"].tolist(), s["student_labels"].tolist()) for s in samples],
                                  cfg.student_len, cfg.block_size, cfg.student_eos_id, cfg.student_pad_id)
    b = len(samples)
    t_lens = []
    for smp in samples:
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
        out.update(_collate_chunks(samples, cfg.student_len, Lt))
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
    return {"pair_student": ps, "pair_teacher": pt, "pair_valid": valid}


def sample_student_mask(input_ids: torch.Tensor, labels: torch.Tensor, mask_id: int, generators: list[torch.Generator],
                        eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """§1.3 with `diffusion.noise`, one generator per sample (so a sample's draw ignores its batch): (t, mask)."""
    t = torch.empty(len(generators))
    mask = torch.zeros_like(labels, dtype=torch.bool)
    for k, g in enumerate(generators):
        t[k : k + 1] = sample_t(1, eps, generator=g)
        _, mask[k : k + 1] = mask_tokens(input_ids[k : k + 1], labels[k : k + 1], t[k : k + 1], mask_id, generator=g)
    return t, mask


class AlignmentStage:
    """Given a collated batch and the student mask: the expanded student mask, where the teacher is masked in
    each pass, and the active chunks."""

    def __init__(self, cfg: StageConfig):
        self.cfg = cfg

    def __call__(self, batch: dict[str, torch.Tensor], student_mask: torch.Tensor,
                 generators: list[torch.Generator] | None = None) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        out: dict[str, torch.Tensor] = {"sampled_student_mask": student_mask}
        chunk_has_masked = None
        if cfg.align == "chunks":
            C = int(batch["num_chunks"].max().item()) if batch["num_chunks"].numel() else 0
            cm = chunk_consistent_masking(student_mask, batch["student_chunk"], batch["teacher_chunk"],
                                          batch["labels"], num_cols=C)
            out.update(student_mask=cm.student_mask, teacher_mask=cm.teacher_mask & batch["teacher_attention_mask"],
                       active_chunks=cm.active)
            chunk_has_masked = cm.has_masked
        else:
            tm = project_mask_through_pairs(student_mask, batch["pair_student"], batch["pair_teacher"],
                                            batch["pair_valid"], batch["teacher_ids"].shape[1])
            out.update(student_mask=student_mask, teacher_mask=tm)
        out["student_noised_ids"] = torch.where(out["student_mask"], cfg.student_mask_id, batch["input_ids"])
        if cfg.compdemo_ratio is not None:
            units = chunk_has_masked if cfg.align == "chunks" else out["student_mask"]
            out.update(self._compdemo(batch, units, generators))
        return out

    def _compdemo(self, batch, units: torch.Tensor, generators) -> dict[str, torch.Tensor]:
        """§4 through `align.compdemo`: split masked units (chunks in A, positions in B) into A and B by u < ratio.

        Pass 1 masks B (A shows ground truth), pass 2 masks A and its values win there. With no masked unit in
        the batch, pass 1 is the single standard pass and pass 2 masks nothing.
        """
        cfg = self.cfg
        u = (torch.stack([torch.rand(units.shape[1], generator=g) for g in generators]) if generators
             else torch.rand(units.shape))
        out = {}
        if cfg.align == "chunks":
            plan = compdemo.plan_chunk_level(units, batch["teacher_chunk"], cfg.compdemo_ratio, u=u)
        else:
            plan = compdemo.plan_token_level(units, batch["pair_student"], batch["pair_teacher"], batch["pair_valid"],
                                             batch["teacher_ids"].shape[1], cfg.compdemo_ratio, u=u)
            # M_A in student positions too, for the unaligned token modes (teacher position = student's, §4, §6)
            out["demo_student_mask_a"] = compdemo.split(units, cfg.compdemo_ratio, u)[0]
        pass1 = plan.passes[0]  # teacher(M_B), or teacher(M) in the single-pass fallback
        pass2 = plan.passes[1] if plan.two_pass else torch.zeros_like(pass1)  # teacher(M_A)
        return {**out, "demo_teacher_mask_a": pass2, "demo_teacher_mask_b": pass1}


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
        t, sampled = sample_student_mask(batch["input_ids"], batch["labels"], self.cfg.student_mask_id, gens,
                                         self.cfg.time_epsilon)
        batch["t"] = t
        batch["epoch"] = torch.tensor(self.epoch, dtype=torch.int64)
        batch.update(self.stage(batch, sampled, gens))
        return batch

"""The process layout of a run under ``teacher.placement`` (DESIGN §2, docs/PLACEMENT.md), the same on every rank.

`Placement.open(cfg)` builds the teacher and student grids (both over the world; or, with ``separate``, the
teacher pool on the last ``teacher.ranks`` ranks and the student on the others) and, with ``separate``, the
payload routes and one point-to-point channel per stream. Every rank makes the same collective calls in the
same order whatever its role, and `close()` gives everything back in the same order. `teacher_source` picks
where a student rank's payloads come from; `open_teacher_cache` checks an offline cache against the run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Optional

import torch.distributed as dist

from tide_megatron.config import TrainConfig
from tide_megatron.distributed.device import process_device
from tide_megatron.distributed.grids import ModelGrid, ParallelLayout, build_teacher_and_student_grids
from tide_megatron.distributed.payload_links import PayloadChannel, PayloadRoutes
from tide_megatron.models.convert.hf_files import read_hf_config
from tide_megatron.teacher.cache import TeacherCache, content_digest, dataset_digest
from tide_megatron.teacher.passes import build_teacher_passes, checkpoint_mask_id, teacher_mask_id
from tide_megatron.teacher.placement import STREAMS, CachedTeacher, ColocatedTeacher, PooledTeacher
from tide_megatron.training.data import ResumableBatches, run_total_steps


@dataclass
class Placement:
    """The grids of a run and, with ``separate``, who sends whom its payloads and on which channels."""

    kind: str  # colocated | separate | offline (a run without a teacher is "colocated" with nothing placed)
    teacher_grid: ModelGrid
    student_grid: ModelGrid
    routes: Optional[PayloadRoutes] = None
    channels: dict[str, PayloadChannel] = field(default_factory=dict)

    @classmethod
    def open(cls, cfg: TrainConfig) -> "Placement":
        """Collective: every rank of the world calls it with the same config."""
        kind = cfg.teacher_placement
        world = dist.get_world_size()
        cfg.check_world_size(world)
        placed = kind in ("colocated", "separate") and cfg.objective.needs_teacher
        pool = cfg.teacher.ranks if kind == "separate" else 0
        teacher_grid, student_grid = build_teacher_and_student_grids(
            cfg.teacher.layout if placed else ParallelLayout(), cfg.student.layout, teacher_ranks=pool)
        placement = cls(kind, teacher_grid, student_grid)
        if kind == "separate":
            placement.routes = PayloadRoutes(world - pool, cfg.student.tp, pool, cfg.teacher.tp, cfg.teacher.pp)
            device = process_device()
            placement.channels = {s: PayloadChannel(f"teacher-payloads-{s}", device) for s in STREAMS}
        return placement

    @property
    def is_teacher_rank(self) -> bool:
        """A rank of the separate teacher pool (it runs `training.teacher_server.TeacherServer`)."""
        return self.routes is not None and self.routes.is_teacher(dist.get_rank())

    def close(self) -> None:
        """Give the grids' and channels' groups back (collective, the same order on every rank). Idempotent."""
        self.student_grid.close()
        self.teacher_grid.close()
        for channel in self.channels.values():
            channel.close()


def resolved_teacher_mask_id(cfg: TrainConfig, meta: dict, own: Optional[int], where: str) -> int:
    """The mask id every teacher pass carries (`passes.teacher_mask_id`), with the teacher's own id from its
    config.json when no teacher is built here."""
    if own is None:
        own = checkpoint_mask_id(cfg.teacher.mask_id, read_hf_config(cfg.teacher.checkpoint), cfg.teacher.arch)
    return teacher_mask_id(own, meta["teacher"], meta["config"]["align"], where)


def pass_builder(cfg: TrainConfig, mask_id: int, pad_id: int, teacher_vocab: int):
    """``batch -> TeacherPasses`` with this run's ids and shared vocabulary (`passes.build_teacher_passes`)."""
    return partial(build_teacher_passes, mask_id=mask_id, pad_id=pad_id, block_size=cfg.student.block_size,
                   vocab_limit=cfg.objective.shared_vocab or teacher_vocab,
                   aligned=not cfg.objective.unaligned_tokens)


def cache_fingerprint(cfg: TrainConfig, train_data, valid_data, mask_id: int) -> dict:
    """What the cached payloads depend on, by config field: the data, the noise, the collation and the teacher
    (the placement and layouts do not change them)."""
    o = cfg.objective
    return {
        "data.train": dataset_digest(train_data),
        "data.valid": None if valid_data is None else dataset_digest(valid_data),
        "optim.seed": cfg.optim.seed,
        "objective.time_epsilon": o.time_epsilon,
        "objective.compdemo": o.compdemo,
        "objective.demo_ratio": o.demo_ratio if o.compdemo else None,
        "student.seq_length": cfg.student.seq_length,
        "student.block_size": cfg.student.block_size,
        "teacher.checkpoint": content_digest(cfg.teacher.checkpoint),
        "teacher.arch": cfg.teacher.arch,
        "teacher.dtype": cfg.teacher.dtype,
        "teacher.mask_id": mask_id,
    }


def cache_splits(train_data, valid_data) -> dict[str, int]:
    return {"train": len(train_data), **({} if valid_data is None else {"valid": len(valid_data)})}


def open_offline_cache(cfg: TrainConfig, train_data, valid_data, student_dp: int) -> Optional[TeacherCache]:
    """With teacher.placement=offline, the run's cache checked against it (`open_teacher_cache`) for the epochs
    its ``student_dp`` data-parallel ranks read; otherwise None."""
    if cfg.teacher_placement != "offline":
        return None
    batches = ResumableBatches(len(train_data), cfg.data.micro_batch_size, 0, student_dp, cfg.optim.seed)
    steps = run_total_steps(cfg, batches.per_epoch)
    return open_teacher_cache(cfg, train_data, valid_data, batches.epoch_of(steps * cfg.optim.grad_accum - 1) + 1,
                              f"{steps} steps x {cfg.optim.grad_accum} micro-batches, {batches.per_epoch} an epoch")


def teacher_vocab_size(cfg: TrainConfig, teacher, cache: Optional[TeacherCache]) -> Optional[int]:
    """The teacher vocabulary: the built teacher's, the cache's, or the checkpoint's config.json (a teacher on
    ranks of its own); None without a teacher term."""
    if not cfg.objective.needs_teacher:
        return None
    if teacher is not None:
        return teacher.vocab_size
    return int(cache.teacher["vocab_size"]) if cache is not None else int(read_hf_config(cfg.teacher.checkpoint)["vocab_size"])


def open_teacher_cache(cfg: TrainConfig, train_data, valid_data, train_epochs: int, why: str) -> TeacherCache:
    """The run's offline cache, refused (`CacheError` naming the file and field) unless it was written for this
    data, seed, noise, collation and teacher checkpoint and holds every split, and the ``train_epochs`` epochs of
    training data (``why``: how the run reads them), the run reads."""
    where = f"data.train ({cfg.data.train or 'in-memory dataset'})"
    mask_id = resolved_teacher_mask_id(cfg, train_data.meta, None, where)
    path = cfg.teacher_cache_path
    if not path:
        raise ValueError("teacher.cache: teacher.placement=offline needs the cache directory (teacher.cache, or a "
                         "data.train path next to which the cache lies)")
    cache = TeacherCache.open(path, cache_fingerprint(cfg, train_data, valid_data, mask_id),
                              cache_splits(train_data, valid_data))
    cache.require_epochs("train", train_epochs, why)
    if valid_data is not None:
        cache.require_epochs("valid", 1, "the held-out evaluation reads epoch 0")
    return cache


def teacher_source(placement: Placement, cfg: TrainConfig, teacher, build_passes, teacher_vocab: int,
                   cache: Optional[TeacherCache]):
    """Where this student rank's payloads come from (None for a mode without a teacher)."""
    if not cfg.objective.needs_teacher:
        return None
    if placement.kind == "offline":
        return CachedTeacher(cache)
    if placement.kind == "separate":
        return PooledTeacher(placement.routes, placement.channels, cfg.objective.shared_vocab or teacher_vocab)
    return ColocatedTeacher(teacher.engine, placement.teacher_grid.pgs.mp, build_passes)

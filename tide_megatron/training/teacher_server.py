"""The teacher pool's ranks under ``teacher.placement=separate``: the trainer's loop with a step that serves payloads.

`TeacherServer` runs `DistillTrainer.run` itself, so every collective of the loop (the preemption flag, checkpoint
saves, held-out evaluations, the end-of-run save) happens on the pool in the same order as on the student ranks.
Its loader is the student's own data pipeline for each student rank its replica serves (the same collator, seed
and sample order: only payloads travel), and it serves each micro-batch position ``lookahead_steps`` optimizer
steps before the loop reaches it, so the teacher works on step k+1 while the student trains on step k. Noise is
fixed per (seed, epoch, sample), so serving ahead changes no number. Its "step" waits until the student ranks
have taken that step's payloads; its checkpoints hold only its RNG states.

`build_trainer` gives each rank its role: the student's `DistillTrainer` or the `TeacherServer`.
"""

from __future__ import annotations

import copy
import sys
import time
from collections import deque
from typing import Iterator, Optional, TextIO, Union

import torch.distributed as dist
from torch.utils.data import Dataset

from tide_megatron.config import TrainConfig, dump_config
from tide_megatron.data.compatibility import check_dataset
from tide_megatron.distributed import init_distributed, seed_model_parallel_rng
from tide_megatron.distributed.device import process_device
from tide_megatron.models.gpt import ensure_global_memory_buffer
from tide_megatron.teacher.placement import TeacherPool
from tide_megatron.training.checkpoint import (TrainState, load_checkpoint, resolve_resume, run_fingerprint,
                                               save_checkpoint)
from tide_megatron.training.data import ResumableBatches, micro_batches, run_total_steps, stage_collator
from tide_megatron.training.logging import MetricsLogger
from tide_megatron.training.models import build_teacher
from tide_megatron.training.placement import Placement, pass_builder, resolved_teacher_mask_id
from tide_megatron.training.run_lock import RunLock
from tide_megatron.training.trainer import DistillTrainer, PreemptionFlag, StepResult


class TeacherServer(DistillTrainer):
    """A teacher-pool rank: the frozen teacher, the served student ranks' data, and `DistillTrainer`'s loop.

    It shares the loop (`run`) and the held-out batch choice (`eval_batches`) with `DistillTrainer` and builds no
    student, so it does not run `DistillTrainer.__init__`.
    """

    def __init__(self, cfg: TrainConfig, train_data: Dataset, valid_data: Optional[Dataset] = None,
                 stream: TextIO = sys.stdout, backend: Optional[str] = None, lookahead_steps: int = 1):
        self.cfg, self.train_data, self.valid_data, self.stream = cfg, train_data, valid_data, stream
        init_distributed()
        self.device = process_device()  # the teacher, the served batches and every collective's tensors
        # The same collective calls, in the same order, as DistillTrainer.__init__ on the student ranks.
        self.run_lock = RunLock.acquire([cfg.output_dir, cfg.checkpoint.dir])
        self.teacher_dp, self.student_dp = cfg.check_world_size(dist.get_world_size())
        self.fingerprint = run_fingerprint(cfg, train_data)
        resume = resolve_resume(cfg.checkpoint.resume, cfg.checkpoint.dir, self.fingerprint)
        self.needs_teacher, self.chunk_level = True, cfg.objective.chunk_level
        self.placement = Placement.open(cfg)
        if not self.placement.is_teacher_rank:
            raise ValueError(f"rank {dist.get_rank()} is not in the teacher pool (teacher.ranks={cfg.teacher.ranks})")
        self.teacher_grid, self.student_grid = self.placement.teacher_grid, self.placement.student_grid
        grid = self.teacher_grid
        seed_model_parallel_rng(cfg.optim.seed, tp_rank=grid.tp_rank, ep_rank=grid.ep_rank, etp_rank=grid.etp_rank)
        ensure_global_memory_buffer()
        self.teacher = build_teacher(cfg.teacher, grid, backend=backend)
        self.teacher.engine.model.to(self.device)
        _join_student_optimizer_build()
        self.meta = train_data.meta
        where = f"data.train ({cfg.data.train or 'in-memory dataset'})"
        check_dataset(self.meta, cfg, where, None, self.teacher.vocab_size)
        self.teacher_pad_id = self.meta["teacher"]["pad_id"]
        self.teacher_mask_id = resolved_teacher_mask_id(cfg, self.meta, self.teacher.mask_id, where)
        self.pool = TeacherPool(self.teacher.engine, self.placement.routes, self.placement.channels,
                                pass_builder(cfg, self.teacher_mask_id, self.teacher_pad_id, self.teacher.vocab_size))
        self.teacher_source = None

        self.collator = stage_collator(cfg, self.meta)
        self.served_batches = [ResumableBatches(len(train_data), cfg.data.micro_batch_size, j, self.student_dp,
                                                cfg.optim.seed, cfg.data.shuffle) for j in self.pool.served]
        self.batches = self.served_batches[0]  # the epoch arithmetic is the same for every served rank
        total = run_total_steps(cfg, self.batches.per_epoch)
        self.state = TrainState(step=0, total_steps=total)
        self.logger = MetricsLogger(cfg.logging.dir, cfg.logging.log_interval, False, stream, group=None,
                                    total_steps=total)
        self.preemption = PreemptionFlag(self.device)
        self.lookahead = lookahead_steps * cfg.optim.grad_accum  # micro-batch positions served ahead of the loop
        self._sent: deque[int] = deque()  # messages queued per served position not yet waited for
        self._serve_s = 0.0
        if resume is not None:
            self.state = load_checkpoint(resume, None, None, None, None)

    def _train_micro_batches(self, start: int, stop: int) -> Iterator[int]:
        """Serves every position ``lookahead`` positions before yielding it to the loop (which only counts them)."""
        channel = self.placement.channels["train"]
        loaders = [micro_batches(self.train_data, batches, copy.copy(self.collator), start, stop,
                                 self.cfg.data.num_workers, self.cfg.data.prefetch_factor, device=self.device)
                   for batches in self.served_batches]
        ahead: deque[int] = deque()
        try:
            for position, bundle in enumerate(zip(*loaders), start):
                t0, queued = time.perf_counter(), channel.queued
                self.pool.serve(list(bundle), "train")
                self._serve_s += time.perf_counter() - t0
                self._sent.append(channel.queued - queued)
                ahead.append(position)
                if len(ahead) > self.lookahead:
                    yield ahead.popleft()
            while ahead:
                yield ahead.popleft()
        finally:
            for loader in loaders:  # stops their DataLoader workers now, however the loop ended
                loader.close()

    def train_step(self, positions: list[int]) -> StepResult:
        """The step's payloads were served ahead: wait until the student ranks have taken them."""
        t0 = time.perf_counter()
        for _ in positions:
            self._sent.popleft()
        self.placement.channels["train"].wait(keep=sum(self._sent))
        self.state.step += 1
        self.state.consumed_micro_batches += len(positions)
        scalars = {"time/teacher_s": self._serve_s, "time/wait_s": time.perf_counter() - t0}
        self._serve_s = 0.0
        return StepResult(loss=0.0, scalars=scalars)

    def evaluate(self) -> dict[str, float]:
        """Serve the held-out payloads of the served student ranks (their own stream, at the same loop point)."""
        if self.valid_data is None:
            return {}
        batches = [self.eval_batches(j) for j in self.pool.served]
        loaders = [micro_batches(self.valid_data, b, copy.copy(self.collator), 0, n, 0, device=self.device)
                   for b, n in batches]
        for bundle in zip(*loaders):
            self.pool.serve(list(bundle), "valid")
        self.placement.channels["valid"].wait()
        return {}

    def save(self) -> str:
        """Join the student's checkpoint (a world collective) with this rank's RNG states."""
        return save_checkpoint(self.cfg.checkpoint.dir, None, None, None, self.state, None, dump_config(self.cfg),
                               self.cfg.checkpoint.keep_last, self.fingerprint)

    def close(self) -> None:
        """End the payload streams, then give the process groups back (collective). Idempotent."""
        if self.pool is not None:
            self.pool.close()
            self.pool = None
        self.logger.close()
        self.placement.close()
        self.run_lock.release()


def _join_student_optimizer_build() -> None:
    """The world collectives of building the student: megatron-core 0.16.1's ``get_megatron_optimizer`` aligns
    the parameter groups of the dense and of the expert parameters with one ``all_gather_object`` each over the
    default group (`_get_param_groups`); a rank without a student contributes no parameter group."""
    for _ in ("dense", "expert"):
        dist.all_gather_object([None] * dist.get_world_size(), [])


def build_trainer(cfg: TrainConfig, train_data: Dataset, valid_data: Optional[Dataset] = None,
                  stream: TextIO = sys.stdout, backend: Optional[str] = None,
                  lookahead_steps: int = 1) -> Union[DistillTrainer, TeacherServer]:
    """This rank's trainer: a `TeacherServer` on the teacher pool of ``teacher.placement=separate``, else the
    `DistillTrainer` (``lookahead_steps``: how far the pool serves ahead; 0 serves each step when it is due)."""
    init_distributed()
    world = dist.get_world_size()
    cfg.check_world_size(world)
    if cfg.teacher_placement == "separate" and dist.get_rank() >= world - cfg.teacher.ranks:
        return TeacherServer(cfg, train_data, valid_data, stream, backend, lookahead_steps)
    return DistillTrainer(cfg, train_data, valid_data, stream, backend)

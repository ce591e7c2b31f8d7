"""The TIDE distillation trainer: one optimizer step reads top to bottom (DESIGN §1; spec §6, §7).

    batch (noised, CompDemo passes planned: DataLoader workers, data/stage.py → data/batch.py)
      → teacher passes: the teacher's inputs of every pass, with its own mask id (teacher/passes.py)
      → payload: gathered over the teacher model-parallel group → one teacher forward → this rank's
        loss-sized payload, CompDemo-merged, in student coordinates (teacher.placement: or received from a
        teacher pool working a step ahead, or read from an offline cache; training/placement.py)
      → student loss: trunk over [xt ; x0] → output layer + CE + TIDE term per group of sequences
        (xt half only, training/student_loss.py) → backward
      → step: DDP gradient reduction → distributed-optimizer step → LR schedule
      → metrics, periodic atomic checkpoint, SIGTERM/SIGUSR1 → checkpoint and stop

TIDAL progress is ``optimizer step / total optimizer steps`` (§3, §9.14), both kept in the checkpoint.
"""

from __future__ import annotations

import copy
import math
import signal
import sys
import time
from dataclasses import dataclass
from typing import Optional, TextIO

import torch
import torch.distributed as dist
from torch.utils.data import Dataset

from tide_megatron.align.rows import aligned_rows, masked_rows
from tide_megatron.config import TrainConfig, dump_config
from tide_megatron.data.batch import DistillBatch
from tide_megatron.data.compatibility import check_dataset
from tide_megatron.diffusion.inputs import bd3lm_inputs
from tide_megatron.distributed import init_distributed, seed_model_parallel_rng
from tide_megatron.distributed.device import process_device
from tide_megatron.distributed.lifetime import JOB_SIGNALS, take_held_job_signal
from tide_megatron.losses import LossInputs, bd3lm_ce, build_objective
from tide_megatron.models.attention_mask import BlockDiffusionMask
from tide_megatron.models.gpt import ensure_global_memory_buffer
from tide_megatron.teacher.passes import check_one_template
from tide_megatron.training.compact import compact_student_inputs, scatter_xt_rows
from tide_megatron.training.checkpoint import (TrainState, load_checkpoint, resolve_resume, run_fingerprint,
                                               save_checkpoint)
from tide_megatron.training.data import ResumableBatches, micro_batches, run_total_steps, stage_collator
from tide_megatron.training.fp8 import check_fp8_available
from tide_megatron.training.logging import MetricsLogger
from tide_megatron.training.models import build_student, build_teacher
from tide_megatron.training.optimizer import build_lr_scheduler, build_optimizer, reduce_gradients, wrap_ddp
from tide_megatron.training.placement import (Placement, open_offline_cache, pass_builder, resolved_teacher_mask_id,
                                              teacher_source, teacher_vocab_size)
from tide_megatron.training.run_lock import RunLock
from tide_megatron.training.student_loss import chunked_loss_backward, supports_chunked_head


@dataclass
class StepResult:
    loss: float
    scalars: dict[str, float]


class PreemptionFlag:
    """SIGTERM / SIGUSR1 (SLURM preemption) only set a flag; the loop checkpoints at the next step boundary."""

    def __init__(self, device: Optional[torch.device] = None) -> None:
        self.raised: Optional[int] = None
        self.device = process_device() if device is None else device  # the all-reduce's (NCCL: the GPU)
        self._previous: dict[int, object] = {}

    def install(self) -> None:
        """Listen from now on, and take a signal that arrived while the run was being set up (`job_signals_held`)."""
        for sig in JOB_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        if self.raised is None:
            self.raised = take_held_job_signal()

    def _handle(self, signum, frame) -> None:
        self.raised = signum

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def any_rank(self) -> bool:
        """True if any rank got a signal (collective: every rank stops at the same step)."""
        flag = torch.tensor([1 if self.raised is not None else 0], dtype=torch.int32, device=self.device)
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())


class DistillTrainer:
    """Owns the student (DDP + distributed optimizer), the teacher engine, the data and the loop.

    With ``teacher.placement=separate`` this runs on the student ranks only; the teacher pool runs
    `training.teacher_server.TeacherServer`, the same loop with a step that serves payloads
    (`training.teacher_server.build_trainer` picks the role).
    """

    def __init__(self, cfg: TrainConfig, train_data: Dataset, valid_data: Optional[Dataset] = None,
                 stream: TextIO = sys.stdout, backend: Optional[str] = None):
        self.cfg, self.train_data, self.valid_data, self.stream = cfg, train_data, valid_data, stream
        init_distributed()
        self.device = process_device()  # models, batches and every collective's tensors live here
        self.run_lock = RunLock.acquire([cfg.output_dir, cfg.checkpoint.dir])  # one run per directory (collective)
        world = dist.get_world_size()
        self.teacher_dp, self.student_dp = cfg.check_world_size(world)
        check_fp8_available(cfg.precision)
        self.fingerprint = run_fingerprint(cfg, train_data)  # a checkpoint of another run is refused on resume
        resume = resolve_resume(cfg.checkpoint.resume, cfg.checkpoint.dir, self.fingerprint)  # fails before any build
        self.needs_teacher = cfg.objective.needs_teacher
        self.chunk_level = cfg.objective.chunk_level
        # the unaligned token modes (§6): every masked position, the teacher on the student's own sequence
        self.unaligned = cfg.objective.unaligned_tokens
        cache = open_offline_cache(cfg, train_data, valid_data, self.student_dp)  # offline only; before any build
        self.placement = Placement.open(cfg)  # the grids (and, separate, the payload channels): collective
        if self.placement.is_teacher_rank:
            raise ValueError(f"rank {dist.get_rank()} is in the teacher pool (teacher.placement=separate): it runs "
                             f"the TeacherServer; build trainers with training.teacher_server.build_trainer")
        self.teacher_grid, self.student_grid = self.placement.teacher_grid, self.placement.student_grid
        seed_model_parallel_rng(cfg.optim.seed, tp_rank=self.student_grid.tp_rank)
        ensure_global_memory_buffer()

        # Student: megatron DDP + distributed optimizer + cosine schedule.
        bf16 = cfg.precision.dtype == "bf16"
        student = build_student(cfg.student, cfg.precision, self.student_grid, backend=backend)
        self.student_vocab = student.vocab_size
        # megatron builds its own layers on the current CUDA device; this places the rest (torch norms of the
        # local spec, RoPE buffers) there too, as megatron's own training does before wrapping in DDP.
        self.model = wrap_ddp(student.model.to(self.device), self.student_grid.pgs)
        self.optimizer = build_optimizer(self.model, cfg.optim, self.student_grid.pgs, bf16=bf16)

        # Teacher: frozen, behind the payload engine, on its own grid (colocated), on a pool of ranks of its own
        # (separate: training/teacher_server.py) or nowhere (offline: the payloads come from the cache).
        colocated = self.needs_teacher and self.placement.kind == "colocated"
        self.teacher = build_teacher(cfg.teacher, self.teacher_grid, backend=backend) if colocated else None
        if self.teacher is not None:
            self.teacher.engine.model.to(self.device)
        where = f"data.train ({cfg.data.train or 'in-memory dataset'})"
        self.meta = train_data.meta
        teacher_vocab = teacher_vocab_size(cfg, self.teacher, cache)
        check_dataset(self.meta, cfg, where, self.student_vocab, teacher_vocab)
        self.teacher_pad_id = self.meta["teacher"]["pad_id"]
        self.teacher_mask_id = resolved_teacher_mask_id(cfg, self.meta, self.teacher.mask_id, where) \
            if self.teacher is not None else self.meta["teacher"]["mask_id"]
        self.teacher_group = self.teacher_grid.pgs.mp  # ranks that must feed one teacher identical inputs
        self.teacher_source = teacher_source(self.placement, cfg, self.teacher, pass_builder(
            cfg, self.teacher_mask_id, self.teacher_pad_id, teacher_vocab or 0), teacher_vocab, cache)

        # Objective (spec §6): the config's own ObjectiveConfig; mode 'ce' has no teacher term.
        o = cfg.objective
        self.objective = build_objective(o.mode, o) if self.needs_teacher else None

        # Data: this rank's micro-batches; collation + noising + teacher projection run in workers.
        self.collator = stage_collator(cfg, self.meta)
        if self.unaligned:
            # the unaligned modes read the student's sequence as the teacher's (§6): refuse two templates now
            # (every batch is checked again when its teacher passes are built)
            first = [train_data[i] for i in range(min(len(train_data), 8))]
            check_one_template(DistillBatch.from_stage(self.collator(first)))
        dp_rank = self.student_grid.dp_rank
        self.batches = ResumableBatches(len(train_data), cfg.data.micro_batch_size, dp_rank, self.student_dp,
                                        cfg.optim.seed, cfg.data.shuffle)
        total = run_total_steps(cfg, self.batches.per_epoch)
        self.state = TrainState(step=0, total_steps=total)
        self.scheduler = build_lr_scheduler(self.optimizer, cfg.optim, total)

        self._student_masks: dict[int, BlockDiffusionMask] = {}  # [xt ; x0] per micro-batch size (student_mask)
        self.logger = MetricsLogger(cfg.logging.dir, cfg.logging.log_interval, cfg.logging.tensorboard, stream,
                                    group=self.student_grid.pgs.dp, total_steps=total, device=self.device)
        self.preemption = PreemptionFlag(self.device)
        if resume is not None:
            self.state = load_checkpoint(resume, self.model, self.optimizer, self.scheduler, self.student_grid.pgs)
            self._print(f"resumed from {resume} at step {self.state.step}/{self.state.total_steps}")
            if self.state.total_steps != total:
                self._print(f"note: keeping the checkpoint's total of {self.state.total_steps} optimizer steps (the "
                            f"TIDAL progress denominator and the LR schedule); this config would give {total}")
        if cache is not None and self.state.total_steps != total:  # the checkpoint's total reads other epochs
            cache.require_epochs("train", self.batches.epoch_of(self.state.total_steps * cfg.optim.grad_accum - 1) + 1,
                                 f"the checkpoint's {self.state.total_steps} steps")

    # ------------------------------------------------------------------------------------------------
    # One step, top to bottom
    # ------------------------------------------------------------------------------------------------

    def train_step(self, micro_batches: list[DistillBatch]) -> StepResult:
        """Forward/backward over ``grad_accum`` micro-batches, then one optimizer step."""
        self.model.train()
        self.model.zero_grad_buffer()
        self.optimizer.zero_grad()
        sums: dict[str, float] = {}
        teacher_s = student_s = 0.0
        if self.teacher is not None:  # teacher input positions of this rank in this step (gpu_check's MFU)
            self.teacher_source.tokens = 0
        for batch in micro_batches:
            t0 = self._clock()
            payload = self.teacher_payload(batch)  # no gradients; collective over the teacher group
            t1 = self._clock()
            terms = self.student_loss(batch, payload, backward_scale=1.0 / len(micro_batches))
            student_s += self._clock() - t1
            teacher_s += t1 - t0
            for key, value in terms.items():
                sums[key] = sums.get(key, 0.0) + value / len(micro_batches)
        t2 = self._clock()
        reduce_gradients(self.model, self.student_grid.pgs)
        _, grad_norm, _ = self.optimizer.step()
        self.scheduler.step(1)
        student_s += self._clock() - t2
        lr = self.optimizer.param_groups[0]["lr"]
        self.state.step += 1
        self.state.consumed_micro_batches += len(micro_batches)
        # Student tokens of the whole job this step (every data-parallel rank trains on as many).
        tokens = sum(int(b.x0.numel()) for b in micro_batches) * self.student_dp
        scalars = {**sums, "lr": lr, "grad_norm": float(grad_norm or 0.0), "tokens": tokens,
                   "time/teacher_s": teacher_s, "time/student_s": student_s,
                   "tokens_per_s": tokens / max(teacher_s + student_s, 1e-9)}
        if self.teacher is not None:  # teacher input positions of the whole job (every rank sends its own)
            scalars["teacher_tokens"] = self.teacher_source.tokens * dist.get_world_size()
        return StepResult(loss=sums["loss/total"], scalars=scalars)

    def _clock(self) -> float:
        """Wall time for the step's phase timers; on CUDA after the queued kernels finish, so each phase is timed
        by its own work (one synchronisation per phase boundary)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    @torch.no_grad()
    def teacher_payload(self, batch: DistillBatch, stream: str = "train") -> Optional[torch.Tensor]:
        """The teacher passes of this micro-batch, run once for every rank of the teacher group: this rank's payload
        (``stream``: "train", or "valid" for the held-out evaluation; see training/placement.py).

        Chunk modes: fp32 ``[b, L_t]`` log p(clean token) (CompDemo-merged). Token modes: fp32 rows
        ``[n, shared_vocab]`` at the distilled positions, each taken from the pass where it was masked.
        """
        return None if self.teacher_source is None else self.teacher_source.payload(batch, stream)

    def student_mask(self, batch_size: int) -> BlockDiffusionMask:
        """The [xt ; x0] block-diffusion mask (§1.4) as a description, on the device: FlexAttention / TE read
        its structure on GPU, SDPA expands it on CPU (its dense form is cached with it, one per batch size)."""
        if batch_size not in self._student_masks:
            self._student_masks[batch_size] = BlockDiffusionMask.halves(
                batch_size, self.cfg.student.seq_length, self.cfg.student.block_size, "xt_x0", device=self.device)
        return self._student_masks[batch_size]

    def student_forward(self, batch: DistillBatch) -> torch.Tensor:
        """Student logits of the xt half only ``[b, L, V]`` (§1.4: [xt ; x0], duplicated positions)."""
        ids, pos = bd3lm_inputs(batch.xt, batch.x0, order="xt_x0")
        return self.model(ids, pos, self.student_mask(ids.shape[0]), logits_rows=slice(0, batch.x0.shape[1]))

    def _loss_inputs(self, batch: DistillBatch, payload, logits: Optional[torch.Tensor]) -> LossInputs:
        inputs = LossInputs(student_logits=logits, x0=batch.x0, masked=batch.masked, maskable=batch.maskable,
                            t=batch.t)
        if self.objective is None:
            return inputs
        if self.chunk_level:
            inputs.student_chunk, inputs.teacher_chunk = batch.student_chunk, batch.teacher_chunk
            inputs.teacher_token_logp, inputs.active = payload, batch.active
        else:  # K of §2.4 (pairs), or every masked position for the unaligned modes (§6)
            inputs.rows = (masked_rows(batch.masked) if self.unaligned else
                           aligned_rows(batch.masked, batch.pair_student, batch.pair_teacher, batch.pair_valid))
            inputs.teacher_rows = payload
        return inputs

    def student_loss(self, batch: DistillBatch, payload, backward_scale: Optional[float] = None) -> dict[str, float]:
        """CE + the mode's TIDE term on this micro-batch (per-micro-batch normalisation, §9.9); with
        ``backward_scale`` also backpropagates ``scale * loss``. Returns the loss terms (and λ)."""
        backward = backward_scale is not None
        module = self.model.module
        chunk = self.cfg.student.logits_chunk_seqs
        if chunk and supports_chunked_head(module):
            L = batch.x0.shape[1]
            weight = module.shared_embedding_or_output_weight()
            with torch.set_grad_enabled(backward):
                if self.cfg.student.skip_unmasked_blocks:  # same loss, fewer blocks (training/compact.py)
                    c = compact_student_inputs(batch.xt, batch.x0, batch.masked, self.cfg.student.block_size,
                                               self.meta["student"]["pad_id"])
                    hidden = scatter_xt_rows(self.model(c.ids, c.position_ids, c.mask, logits_rows=slice(0, c.xt_rows),
                                                        output="hidden"), c.xt_positions, L)
                else:
                    ids, pos = bd3lm_inputs(batch.xt, batch.x0, order="xt_x0")
                    hidden = self.model(ids, pos, self.student_mask(ids.shape[0]), logits_rows=slice(0, L),
                                        output="hidden")
            terms = chunked_loss_backward(hidden, weight, self._loss_inputs(batch, payload, None), self.objective,
                                          self.state.step, self.state.total_steps, chunk, self._term_weights(),
                                          backward_scale or 1.0, backward)
        else:
            tp_group = self.student_grid.pgs.tp if self.student_grid.layout.tp > 1 else None
            with torch.set_grad_enabled(backward):
                logits = self.student_forward(batch)
                if self.objective is None:
                    loss = bd3lm_ce(logits, batch.x0, batch.masked, batch.maskable, batch.t, tp_group)
                    out_terms = {}
                    ce = loss
                else:
                    out = self.objective(self._loss_inputs(batch, payload, logits), step=self.state.step,
                                         total_steps=self.state.total_steps, tp_group=tp_group)
                    loss, ce, out_terms = out.total, out.ce, out.terms
            if backward:
                (loss * backward_scale).backward()
            terms = {"loss/total": float(loss.detach()), "loss/ce": float(ce.detach())}
            terms.update({f"loss/{k}": float(v.detach()) for k, v in out_terms.items()})
        if self.objective is not None:
            lam = self._mean_lambda(batch)
            if lam is not None:
                terms["lambda"] = lam
        return terms

    def _term_weights(self) -> dict[str, float]:
        if self.objective is None:
            return {}
        return {c.name: self.cfg.objective.weight(c) for c in self.objective.components}  # §9.20

    def _mean_lambda(self, batch: DistillBatch) -> Optional[float]:
        comps = self.objective.components
        tidal = [c for c in comps if c.uses_tidal]
        if not tidal:
            return None
        sched = self.objective.config.schedule(tidal[0])
        return float(sched.lam(batch.t, self.state.step, self.state.total_steps).mean())

    # ------------------------------------------------------------------------------------------------
    # The loop
    # ------------------------------------------------------------------------------------------------

    def run(self, stop_after: Optional[int] = None) -> dict[str, float]:
        """Train to ``total_steps`` (or ``stop_after`` more steps); checkpoint periodically, on signal and at the end."""
        cfg = self.cfg
        accum = cfg.optim.grad_accum
        last = self.state.total_steps if stop_after is None else min(self.state.total_steps,
                                                                      self.state.step + stop_after)
        start = self.state.consumed_micro_batches  # the data position restored from the checkpoint
        loader = self._train_micro_batches(start, start + (last - self.state.step) * accum)
        if cfg.checkpoint.save_on_signal:
            self.preemption.install()
        preempted = False
        try:
            pending: list[DistillBatch] = []
            for batch in loader:
                pending.append(batch)
                if len(pending) < accum:
                    continue
                result = self.train_step(pending)
                pending = []
                self.logger.record(self.state.step, result.scalars)
                if not math.isfinite(result.loss):
                    raise FloatingPointError(f"loss is {result.loss} at step {self.state.step}")
                if cfg.logging.eval_interval and self.state.step % cfg.logging.eval_interval == 0:
                    self.evaluate()
                if self.state.step % cfg.checkpoint.save_interval == 0:
                    self.save()
                if cfg.checkpoint.save_on_signal and self.preemption.any_rank():
                    self._print(f"signal received: checkpointing at step {self.state.step} and stopping")
                    self.save()
                    preempted = True
                    break
        finally:
            loader.close()  # stops the DataLoader workers now, whatever ended the loop
            self.preemption.restore()
        finished = self.state.step >= self.state.total_steps
        if finished and cfg.checkpoint.save_at_end and self.state.step % cfg.checkpoint.save_interval != 0:
            self.save()
        if finished and self.valid_data is not None:
            self.evaluate()
        summary = self.logger.summary(self.state.step)
        summary["preempted"] = float(preempted)
        return summary

    def _train_micro_batches(self, start: int, stop: int):
        """What the loop iterates: this rank's micro-batches ``start .. stop-1``."""
        return micro_batches(self.train_data, self.batches, self.collator, start, stop, self.cfg.data.num_workers,
                             self.cfg.data.prefetch_factor, device=self.device)

    def eval_batches(self, dp_rank: int) -> tuple[ResumableBatches, int]:
        """The held-out micro-batches of a data-parallel rank (fixed order, seed + 1) and how many are read."""
        batches = ResumableBatches(len(self.valid_data), self.cfg.data.micro_batch_size, dp_rank, self.student_dp,
                                   seed=self.cfg.optim.seed + 1, shuffle=False)
        return batches, min(self.cfg.logging.eval_batches, batches.per_epoch)

    def save(self) -> str:
        return save_checkpoint(self.cfg.checkpoint.dir, self.model, self.optimizer, self.scheduler, self.state,
                               self.student_grid.pgs, dump_config(self.cfg), self.cfg.checkpoint.keep_last,
                               self.fingerprint)

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Held-out loss with fixed noise (same batches and seeds at every evaluation), averaged over ranks."""
        if self.valid_data is None:
            return {}
        self.model.eval()
        batches, n = self.eval_batches(self.student_grid.dp_rank)
        # Its own collator: the training loader may still be iterating this epoch with self.collator in-process.
        loader = micro_batches(self.valid_data, batches, copy.copy(self.collator), 0, n, 0,
                              device=self.device)
        sums: dict[str, float] = {}
        for batch in loader:
            payload = self.teacher_payload(batch, "valid")
            terms = self.student_loss(batch, payload)
            for key, value in terms.items():
                if key.startswith("loss/"):
                    sums["eval/" + key[5:]] = sums.get("eval/" + key[5:], 0.0) + value / n
        keys = sorted(sums)
        values = torch.tensor([sums[k] for k in keys], dtype=torch.float64, device=self.device)
        if self.student_dp > 1:
            dist.all_reduce(values, group=self.student_grid.pgs.dp)
            values /= self.student_dp
        result = dict(zip(keys, values.tolist()))
        self.logger.log_eval(self.state.step, result)
        self.model.train()
        return result

    def _print(self, text: str) -> None:
        if dist.get_rank() == 0:
            self.stream.write(text + "\n")
            self.stream.flush()

    def close(self) -> None:
        """End the teacher streams, close the logs and give the process groups back (collective: every rank
        closes). Idempotent."""
        if self.teacher_source is not None:
            self.teacher_source.close()
            self.teacher_source = None
        self.logger.close()
        self.placement.close()
        self.run_lock.release()

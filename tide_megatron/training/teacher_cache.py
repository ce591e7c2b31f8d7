"""tide-teacher-cache: the teacher payloads of N epochs, written once for ``teacher.placement=offline``.

Every rank builds the teacher on the teacher grid (teacher.tp/pp/ep over the whole job, as a colocated run does)
and takes its share of each epoch's samples in index order, through the run's own collator (the same noise as
training: seeded by optim.seed, epoch and sample). Rank 0 gathers the payloads and writes them with
`teacher.cache.CacheWriter` into a staged directory, renamed into place only once every split and epoch is
written; an error (or a signal) leaves nothing at the final path and removes the staged one.
"""

from __future__ import annotations

import copy
import math
import sys
from pathlib import Path
from typing import Iterator, Optional, TextIO

import numpy as np
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset

from tide_megatron.atomic import staged_path
from tide_megatron.config import TrainConfig
from tide_megatron.data.batch import DistillBatch
from tide_megatron.data.compatibility import check_dataset
from tide_megatron.distributed import build_model_grid, init_distributed, seed_model_parallel_rng
from tide_megatron.errors import ConfigError
from tide_megatron.models.gpt import ensure_global_memory_buffer
from tide_megatron.teacher.cache import CacheWriter, cache_size_bytes
from tide_megatron.teacher.passes import run_teacher_passes
from tide_megatron.training.models import build_teacher
from tide_megatron.training.placement import cache_fingerprint, pass_builder, resolved_teacher_mask_id
from tide_megatron.training.data import stage_collator


def default_epochs(cfg: TrainConfig) -> int:
    """The epochs a run of ``cfg`` reads when it counts epochs (optim.train_steps = 0): ceil(optim.epochs)."""
    return max(1, int(math.ceil(cfg.optim.epochs)))


def _teacher_tokens(dataset: Dataset) -> int:
    return sum(int(len(dataset[i]["teacher_ids"])) for i in range(len(dataset)))


def _rank_index_lists(n: int, micro_batch: int, rank: int, world: int) -> list[tuple[list[int], int]]:
    """This rank's micro-batches of one pass over ``n`` samples in index order: round r gives rank k samples
    ``[(r*world + k)*mbs, ...)``; a rank left without samples in the last round repeats sample 0 (discarded), so
    that every rank runs the teacher's collectives equally often. Returns (indices, how many are real)."""
    rounds = math.ceil(n / (world * micro_batch))
    out = []
    for r in range(rounds):
        start = (r * world + rank) * micro_batch
        real = list(range(start, min(n, start + micro_batch)))
        out.append((real or [0], len(real)))
    return out


def _epoch_payloads(engine, group, build_passes, dataset: Dataset, collator, epoch: int, micro_batch: int,
                    num_workers: int) -> Iterator[np.ndarray]:
    """Every rank runs its share of one epoch; rank 0 yields sample i's payload (one fp32 per teacher token), in
    index order. Collective over the world."""
    rank, world = dist.get_rank(), dist.get_world_size()
    lists = _rank_index_lists(len(dataset), micro_batch, rank, world)
    collator = copy.copy(collator)
    collator.set_epoch(epoch)
    loader = DataLoader(dataset, batch_sampler=[indices for indices, _ in lists], collate_fn=collator,
                        num_workers=num_workers)
    expected = 0
    for (_, real), out in zip(lists, loader):
        batch = DistillBatch.from_stage(out)
        payload = run_teacher_passes(engine, build_passes(batch), group).float().cpu()
        lengths = batch.teacher_attention.sum(1).tolist()
        mine = [(int(i), payload[k, :n].numpy().copy()) for k, (i, n) in enumerate(zip(batch.index.tolist(),
                                                                                        lengths)) if k < real]
        gathered = [None] * world if rank == 0 else None
        dist.gather_object(mine, gathered, dst=0)
        if rank == 0:
            for part in gathered:
                for index, values in part:
                    if index != expected:
                        raise RuntimeError(f"teacher cache: sample {index} arrived where sample {expected} belongs")
                    expected += 1
                    yield values


def precompute_teacher_cache(cfg: TrainConfig, train_data: Dataset, valid_data: Optional[Dataset] = None,
                             epochs: Optional[int] = None, overwrite: bool = False, stream: TextIO = sys.stdout,
                             backend: Optional[str] = None) -> str:
    """Write the teacher payloads of ``epochs`` epochs of ``train_data`` (and epoch 0 of ``valid_data``) to the
    run's cache path; returns it. Collective over the world."""
    init_distributed()
    cfg.check_offline_payload(force=True)
    out = Path(cfg.teacher_cache_path)
    if not str(out) or str(out) == ".":
        raise ConfigError("teacher.cache: no cache path (set teacher.cache, or data.train for the default "
                          "<data.train>.teacher-cache)")
    if out.exists() and not overwrite:
        raise ConfigError(f"teacher.cache: {out} exists; remove it or pass --overwrite")
    epochs = default_epochs(cfg) if epochs is None else epochs
    if epochs < 1:
        raise ConfigError(f"--epochs: expected an integer >= 1, got {epochs}")
    rank = dist.get_rank()
    grid = build_model_grid(cfg.teacher.layout, "teacher")
    try:
        seed_model_parallel_rng(cfg.optim.seed, tp_rank=grid.tp_rank, ep_rank=grid.ep_rank, etp_rank=grid.etp_rank)
        ensure_global_memory_buffer()
        teacher = build_teacher(cfg.teacher, grid, backend=backend)
        meta = train_data.meta
        where = f"data.train ({cfg.data.train or 'in-memory dataset'})"
        check_dataset(meta, cfg, where, None, teacher.vocab_size)
        mask_id = resolved_teacher_mask_id(cfg, meta, teacher.mask_id, where)
        build_passes = pass_builder(cfg, mask_id, meta["teacher"]["pad_id"], teacher.vocab_size)
        fingerprint = cache_fingerprint(cfg, train_data, valid_data, mask_id)
        splits = [("train", train_data, epochs)] + ([("valid", valid_data, 1)] if valid_data is not None else [])
        if rank == 0:
            size = sum(cache_size_bytes(_teacher_tokens(data), n) for _, data, n in splits)
            stream.write(f"tide-teacher-cache: {epochs} epoch(s) of {len(train_data)} training samples"
                         f"{f' + {len(valid_data)} held-out' if valid_data is not None else ''}, one fp32 per teacher "
                         f"token: {size / 2**20:.2f} MiB -> {out}\n")
            stream.flush()
        collator = stage_collator(cfg, meta)
        mbs, workers = cfg.data.micro_batch_size, cfg.data.num_workers

        def run_split(writer: Optional[CacheWriter]) -> None:
            for split, data, n_epochs in splits:
                for epoch in range(n_epochs):
                    payloads = _epoch_payloads(teacher.engine, grid.pgs.mp, build_passes, data, collator, epoch,
                                               mbs, workers)
                    if writer is None:
                        for _ in payloads:  # other ranks yield nothing but take part in every collective
                            pass
                    else:
                        writer.write_epoch(split, epoch, payloads, len(data))
                        stream.write(f"tide-teacher-cache: {split} epoch {epoch} written\n")
                        stream.flush()

        if rank == 0:
            with staged_path(out, directory=True) as staged:
                writer = CacheWriter(staged, fingerprint, {"vocab_size": teacher.vocab_size, "mask_id": mask_id,
                                                           "pad_id": int(meta["teacher"]["pad_id"])})
                run_split(writer)
                writer.finish()
        else:
            run_split(None)
        dist.barrier()
    finally:
        grid.close()
    return str(out)

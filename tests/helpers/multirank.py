"""Shared pieces of the multi-rank trainer tests: a directory every rank agrees on and tiny trainer configs."""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch.distributed as dist

from tide_megatron.config import TrainConfig, config_from_dict
from tests.helpers import tiny_distill as td


def shared_dir(name: str) -> Path:
    """One fresh directory all ranks agree on (rank 0 creates it)."""
    holder = [tempfile.mkdtemp(prefix=f"tide-{name}-") if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(holder, src=0)
    return Path(holder[0])


def shared_artifacts(name: str) -> Path:
    """A shared directory holding the tiny student, dense teacher (tied embeddings) and MoE teacher, written by
    rank 0 (``student``, ``dense``, ``moe``: what `tiny_config` reads)."""
    root = shared_dir(name)
    if dist.get_rank() == 0:
        td.write_checkpoints(root)
    dist.barrier()
    return root


def gather_reduced_gradient(ddp) -> None:
    """After megatron DDP's reduce-scatter each rank holds its shard of every bucket: gather the shards so that
    every parameter's ``main_grad`` holds the whole averaged gradient (for comparing against one rank)."""
    for group in ddp.bucket_groups:
        pg = group.intra_distributed_optimizer_instance_group
        n, r = dist.get_world_size(pg), dist.get_rank(pg)
        for bucket in group.buckets:
            shard = bucket.grad_data.view(n, -1)[r].clone()
            dist.all_gather_into_tensor(bucket.grad_data, shard, group=pg)


def tiny_config(artifacts: Path, variant: str, out: Path, **sections) -> TrainConfig:
    """A two-step fp32 run of a paper preset on the tiny checkpoints in ``artifacts`` (student, dense, moe)."""
    pipe = "A" if variant.startswith("a_") else "B"
    raw = {"preset": variant, "output_dir": str(out),
           "student": {"checkpoint": str(artifacts / "student"), "seq_length": 48, "block_size": 16},
           "teacher": {"checkpoint": str(artifacts / ("moe" if pipe == "A" else "dense")), "dtype": "fp32",
                       **({"ep": 2} if pipe == "A" else {"tp": 2})},
           "data": {"micro_batch_size": 2, "num_workers": 0},
           "optim": {"train_steps": 2, "lr": 1e-3},
           "objective": {"shared_vocab": td.STUDENT_VOCAB - 8},
           "precision": {"dtype": "fp32"},
           "checkpoint": {"resume": "none", "save_interval": 1000, "save_at_end": False},
           "logging": {"log_interval": 1, "tensorboard": True}}
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value}
    return config_from_dict(raw)

"""Process-group start-up: NCCL on GPU, gloo on CPU, always with a timeout so a failed rank errors."""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Optional

import torch
import torch.distributed as dist

from tide_megatron.distributed import cpu_compat, groups

DEFAULT_TIMEOUT_S = int(os.environ.get("TIDE_DIST_TIMEOUT_S", "600"))


def default_backend() -> str:
    """'nccl' when CUDA is usable, otherwise 'gloo'."""
    return "nccl" if torch.cuda.is_available() else "gloo"


def init_distributed(backend: Optional[str] = None, timeout_s: int = DEFAULT_TIMEOUT_S) -> tuple[int, int]:
    """Initialise torch.distributed from the torchrun/SLURM environment; returns (rank, world_size).

    Works without a launcher too (a single process becomes a world of one). Applies the CPU
    compatibility layer when CUDA is absent. Idempotent.
    """
    cpu_compat.apply()
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    _fill_env_from_slurm()
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    os.environ.setdefault("LOCAL_RANK", "0")
    backend = backend or default_backend()
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    timeout = timedelta(seconds=timeout_s)
    if int(os.environ["WORLD_SIZE"]) == 1:
        # A world of one needs no rendezvous: an in-process store, so concurrent single-process runs on one
        # host never race for a TCP port.
        dist.init_process_group(backend=backend, store=dist.HashStore(), rank=0, world_size=1, timeout=timeout)
    else:
        dist.init_process_group(backend=backend, timeout=timeout)
    return dist.get_rank(), dist.get_world_size()


def _fill_env_from_slurm() -> None:
    """Map SLURM's per-task variables to torchrun's when srun launches one task per device."""
    if "RANK" in os.environ or "SLURM_PROCID" not in os.environ:
        return
    os.environ["RANK"] = os.environ["SLURM_PROCID"]
    os.environ["WORLD_SIZE"] = os.environ.get("SLURM_NTASKS", "1")
    os.environ["LOCAL_RANK"] = os.environ.get("SLURM_LOCALID", "0")


def destroy_megatron_parallel_state() -> None:
    """`parallel_state.destroy_model_parallel()` plus destroying the groups it only forgets (it frees the gloo
    copies alone, so every `initialize_model_parallel` would otherwise leave ~20 live groups behind)."""
    from megatron.core import parallel_state

    live = {}
    if dist.is_initialized():
        for value in vars(parallel_state).values():
            for group in value if isinstance(value, (list, tuple)) else (value,):
                if isinstance(group, dist.ProcessGroup) and group is not dist.group.WORLD:
                    live[id(group)] = group
    held = {id(g) for g in groups.held_groups()}
    parallel_state.destroy_model_parallel()
    for key, group in live.items():
        if key not in held and group in dist.distributed_c10d._world.pg_map:
            dist.destroy_process_group(group)


def destroy_distributed() -> None:
    """Tear down megatron's global state and the default process group."""
    destroy_megatron_parallel_state()
    groups.forget_all()  # destroying the default group destroys every other group too
    if dist.is_initialized():
        dist.destroy_process_group()


def seed_model_parallel_rng(seed: int, tp_rank: int = 0, ep_rank: int = 0, etp_rank: int = 0) -> None:
    """Seed torch and megatron's model-parallel RNG tracker (needed before the first forward)."""
    from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed

    torch.manual_seed(seed)
    model_parallel_cuda_manual_seed(seed, tp_rank=tp_rank, ep_rank=ep_rank, etp_rank=etp_rank,
                                    force_reset_rng=True)

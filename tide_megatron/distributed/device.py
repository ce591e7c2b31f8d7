"""The one device of this process and of its collectives: the LOCAL_RANK GPU under NCCL, the CPU under gloo.

Every tensor a step touches lives on `process_device()`: the models (megatron builds them on the current CUDA
device), the batches (moved there by the data loader, `training.data`), and every tensor handed to a
collective. NCCL only takes CUDA tensors and gloo (here) CPU ones, so code that builds a tensor for a
collective asks `collective_device(group)` rather than assuming one.
"""

from __future__ import annotations

import os
from typing import Optional

import torch
import torch.distributed as dist


def default_backend() -> str:
    """'nccl' when CUDA is usable, otherwise 'gloo'."""
    return "nccl" if torch.cuda.is_available() else "gloo"


def device_for_backend(backend: str) -> torch.device:
    """CUDA device ``LOCAL_RANK`` for NCCL (one GPU per process), the CPU for gloo."""
    if backend == "nccl":
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def process_device() -> torch.device:
    """This process's device: the current CUDA device when the default process group is NCCL, else the CPU
    (gloo, or no process group yet on a machine without CUDA)."""
    if dist.is_initialized():
        return collective_device(None)
    return device_for_backend(default_backend())


def collective_device(group: Optional[dist.ProcessGroup]) -> torch.device:
    """Where tensors handed to a collective over ``group`` (None = the default group) must live."""
    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")

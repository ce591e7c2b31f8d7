"""The machine checks of tide-train's start-up, importable before megatron-core (a broken Transformer Engine
install breaks ``import megatron.core``, and this must still be able to say so).

- A job given GPUs (SLURM's GPU variables, ``CUDA_VISIBLE_DEVICES``) whose torch sees no CUDA device.
- A Transformer Engine this torch cannot use (models/transformer_engine.py).
"""

from __future__ import annotations

import os
import re
from typing import Mapping, Optional

import torch

from tide_megatron.models.transformer_engine import TransformerEngineError, check_transformer_engine_install

#: Variables that give a job a number of GPUs ("8", "a100:8", "gpu:a100:2,v100:1").
GPU_COUNT_VARS = ("SLURM_GPUS", "SLURM_GPUS_ON_NODE", "SLURM_GPUS_PER_NODE", "SLURM_GPUS_PER_TASK")
#: Variables that list the GPUs a job may use ("0,1,2", UUIDs).
GPU_LIST_VARS = ("SLURM_JOB_GPUS", "SLURM_STEP_GPUS", "CUDA_VISIBLE_DEVICES")
_NO_DEVICES = ("", "-1", "none", "nodevfiles", "void")


class StartupError(ValueError):
    """This job cannot start as configured; the message says which variable, file or field, and why."""


def gpus_given(env: Mapping[str, str]) -> Optional[tuple[str, str]]:
    """The first (variable, value) that gives this job GPUs, or None."""
    for name in GPU_COUNT_VARS:
        value = env.get(name, "").strip()
        counts = [int(n) for n in re.findall(r"(?:^|[:,])(\d+)(?=,|$)", value)]
        if sum(counts) > 0:
            return name, value
    for name in GPU_LIST_VARS:
        value = env.get(name)
        if value is not None and value.strip().lower() not in _NO_DEVICES:
            return name, value
    return None


def check_gpus_visible(env: Mapping[str, str] = os.environ, cuda_available: Optional[bool] = None,
                       cuda_build: Optional[str] = "unset", device_count: Optional[int] = None) -> None:
    """A job given GPUs must have a torch that sees them (a CPU torch would silently train on gloo + CPU)."""
    given = gpus_given(env)
    if given is None:
        return
    cuda_available = torch.cuda.is_available() if cuda_available is None else cuda_available
    if cuda_available:
        return
    cuda_build = torch.version.cuda if cuda_build == "unset" else cuda_build
    name, value = given
    if cuda_build is None:
        seen = (f"this torch ({torch.__version__}) is a CPU-only build; install the CUDA build "
                f"(TIDE_TORCH=cuda bash scripts/setup_env.sh)")
    else:
        count = torch.cuda.device_count() if device_count is None else device_count
        seen = (f"torch {torch.__version__} (built for CUDA {cuda_build}) reports torch.cuda.is_available() = False, "
                f"device_count() = {count}: check the driver and the devices the job step can see")
    raise StartupError(f"{name}={value} gives this job GPUs, but {seen}")


def check_machine(env: Mapping[str, str] = os.environ) -> None:
    """The checks that need no config: GPUs given vs torch's CUDA, a usable TE install."""
    check_gpus_visible(env)
    try:
        check_transformer_engine_install()
    except TransformerEngineError as err:
        raise StartupError(str(err)) from None

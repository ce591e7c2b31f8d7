"""Resumable training checkpoints with megatron-core `dist_checkpointing` (DESIGN §1).

A checkpoint holds the student model, the distributed-optimizer state, the LR schedule, the optimizer
step (TIDAL progress = step / total steps, spec §3, §9.14), every rank's RNG states and the data
position. It is written to ``<root>/.tmp-step_XXXXXXX`` and renamed to ``<root>/step_XXXXXXX`` only
once every rank has finished, so a killed save never looks like a checkpoint; ``<root>/latest`` names
the newest one. Only the last N are kept. The teacher is frozen and is never checkpointed: with
``teacher.placement=separate`` the teacher pool's ranks join every save and load (dist_checkpointing's
collectives span the world) with their RNG states only (``model=None``).
"""

from __future__ import annotations

import json
import random
import re
import shutil
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import torch.distributed as dist
from megatron.core import dist_checkpointing
from megatron.core.dist_checkpointing.mapping import ShardedObject
from megatron.core.process_groups_config import ProcessGroupCollection

from tide_megatron.atomic import publish, write_text_atomic
from tide_megatron.training.optimizer import prepare_optimizer_for_loading, restore_adam_step_counts

STEP_DIR = re.compile(r"^step_(\d{7,})$")
COMPLETE_MARKER = "tide_checkpoint.json"
FORMAT_VERSION = 1
# 'dp_reshardable': each data-parallel rank writes its own optimizer shard, no gather (fully parallel).
OPTIMIZER_SHARDING = "dp_reshardable"


class CheckpointError(RuntimeError):
    """A checkpoint directory is missing, partial or corrupt; the message names it."""


@dataclass
class TrainState:
    """Scalar progress saved with every checkpoint (the data position lives here too)."""

    step: int = 0  # optimizer steps taken
    total_steps: int = 0  # optimizer steps in the whole run (TIDAL progress denominator)
    consumed_micro_batches: int = 0  # per data-parallel rank, across epochs (the data position)

    def to_dict(self) -> dict:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, values: dict) -> "TrainState":
        """The saved progress; keys only earlier versions wrote (``epoch``, never read) are ignored."""
        return cls(**{f.name: values[f.name] for f in fields(cls) if f.name in values})


def step_dir_name(step: int) -> str:
    return f"step_{step:07d}"


def _rng_state() -> dict:
    """Every random generator this rank uses: python, numpy, torch CPU, CUDA, megatron's tracker."""
    from megatron.core.tensor_parallel.random import get_cuda_rng_tracker

    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch_cpu": torch.get_rng_state(),
        "tracker": {k: v.clone() for k, v in get_cuda_rng_tracker().get_states().items()},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict) -> None:
    from megatron.core.tensor_parallel.random import get_cuda_rng_tracker

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch_cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    if state.get("tracker"):
        get_cuda_rng_tracker().set_states(state["tracker"])


def _sharded_state_dict(model, optimizer, pgs: Optional[ProcessGroupCollection], is_loading: bool) -> dict:
    """The model + optimizer + per-rank RNG entries, keyed for dist_checkpointing (RNG only without a model:
    a rank of a separate teacher pool)."""
    state = {}
    if model is not None:
        metadata = {"dp_cp_group": pgs.dp_cp, "distrib_optim_sharding_type": OPTIMIZER_SHARDING}
        model_sd = model.sharded_state_dict(metadata=metadata)
        if is_loading:
            prepare_optimizer_for_loading(optimizer)
        state = {"model": model_sd,
                 "optimizer": optimizer.sharded_state_dict(model_sd, is_loading=is_loading, metadata=metadata)}
    rank, world = dist.get_rank(), dist.get_world_size()
    state["rng_state"] = ShardedObject("rng_state", _rng_state(), (world,), (rank,), replica_id=0)
    return state


def save_checkpoint(root: str, model, optimizer, scheduler, train_state: TrainState,
                    pgs: Optional[ProcessGroupCollection], config_yaml: str = "", keep_last: int = 2) -> str:
    """Write one checkpoint atomically (collective over the world); returns its final directory. A rank without
    a student (``model=None``: a separate teacher pool) contributes its RNG states."""
    root_path = Path(root)
    final = root_path / step_dir_name(train_state.step)
    tmp = root_path / f".tmp-{final.name}"
    rank = dist.get_rank()
    if rank == 0:
        root_path.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
    dist.barrier()
    state = _sharded_state_dict(model, optimizer, pgs, is_loading=False)
    state["train_state"] = train_state.to_dict()
    if scheduler is not None:
        state["lr_scheduler"] = scheduler.state_dict()
    state["format_version"] = FORMAT_VERSION
    dist_checkpointing.save(state, str(tmp), preprocess_common_before_consistancy_check=_shared_common_state)
    dist.barrier()
    if rank == 0:
        (tmp / "config.yaml").write_text(config_yaml)
        write_text_atomic(tmp / COMPLETE_MARKER, json.dumps({"format_version": FORMAT_VERSION,
                                                             "world_size": dist.get_world_size(),
                                                             **train_state.to_dict()}, indent=1))
        publish(tmp, final)  # replaces a re-save of the same step (e.g. a signal right after a periodic save)
        write_text_atomic(root_path / "latest", final.name + "\n")
        _prune(root_path, keep_last)
    dist.barrier()
    return str(final)


def _shared_common_state(common: dict) -> dict:
    """The common entries every rank holds (the LR schedule lives on student ranks only)."""
    return {k: v for k, v in common.items() if k != "lr_scheduler"}


def _prune(root: Path, keep_last: int) -> None:
    steps = list_checkpoints(str(root))
    for old in steps[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)


def list_checkpoints(root: str) -> list[Path]:
    """Completed-looking step directories under ``root``, oldest first."""
    p = Path(root)
    if not p.is_dir():
        return []
    found = [(int(m.group(1)), c) for c in p.iterdir() if c.is_dir() and (m := STEP_DIR.match(c.name))]
    return [c for _, c in sorted(found)]


def validate_checkpoint_dir(path: str) -> dict:
    """Check that ``path`` is a complete TIDE checkpoint; return its marker. Raises `CheckpointError`."""
    p = Path(path)
    if not p.is_dir():
        raise CheckpointError(f"checkpoint {path!r}: not a directory")
    marker = p / COMPLETE_MARKER
    if not marker.is_file():
        raise CheckpointError(f"checkpoint {path!r} is partial or not a TIDE checkpoint: {COMPLETE_MARKER} is "
                              f"missing (an interrupted save?). Remove the directory or set checkpoint.resume to "
                              f"another checkpoint")
    try:
        info = json.loads(marker.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"checkpoint {path!r}: {COMPLETE_MARKER} is corrupt ({err})") from None
    if not (p / "metadata.json").is_file() or not (p / "common.pt").is_file():
        raise CheckpointError(f"checkpoint {path!r} is corrupt: dist_checkpointing's metadata.json or common.pt "
                              f"is missing")
    if info.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {path!r}: format version {info.get('format_version')} is not "
                              f"{FORMAT_VERSION}")
    return info


def resolve_resume(resume: str, root: str) -> Optional[str]:
    """Which checkpoint to load: ``none`` → None; ``auto`` → the newest in ``root`` (None if empty); else the path.

    The chosen directory is validated, so a corrupt or partial one is a clear error before any work.
    """
    if resume == "none":
        return None
    if resume == "auto":
        steps = list_checkpoints(root)
        if not steps:
            return None
        latest_file = Path(root) / "latest"
        chosen = steps[-1]
        if latest_file.is_file():
            named = Path(root) / latest_file.read_text().strip()
            if named.is_dir() and named != chosen:
                chosen = max(named, chosen, key=lambda c: int(STEP_DIR.match(c.name).group(1)))
        validate_checkpoint_dir(str(chosen))
        return str(chosen)
    validate_checkpoint_dir(resume)
    return resume


def load_checkpoint(path: str, model, optimizer, scheduler, pgs: Optional[ProcessGroupCollection]) -> TrainState:
    """Restore model, optimizer, LR schedule and this rank's RNG states; return the saved progress (collective;
    ``model=None`` restores the RNG states and the progress only)."""
    info = validate_checkpoint_dir(path)
    if info.get("world_size") not in (None, dist.get_world_size()):
        raise CheckpointError(f"checkpoint {path!r} was written by {info['world_size']} ranks; this job has "
                              f"{dist.get_world_size()} (RNG states and data positions are per rank)")
    state = _sharded_state_dict(model, optimizer, pgs, is_loading=True)
    try:
        loaded = dist_checkpointing.load(state, path)
    except Exception as err:  # dist_checkpointing raises many types; name the directory
        raise CheckpointError(f"checkpoint {path!r} could not be loaded: {type(err).__name__}: {err}") from err
    if model is not None:
        model.load_state_dict(loaded["model"], strict=False)
        with torch.no_grad():  # DistOpt copies into views of leaf parameters (MEGATRON_ON_CPU §4)
            optimizer.load_state_dict(loaded["optimizer"])
        restore_adam_step_counts(optimizer)
        scheduler.load_state_dict(loaded["lr_scheduler"])
    _set_rng_state(loaded["rng_state"])
    return TrainState.from_dict(loaded["train_state"])


def read_checkpoint_info(path: str) -> dict[str, Any]:
    """The progress recorded in a checkpoint's marker (no distributed work)."""
    return validate_checkpoint_dir(path)

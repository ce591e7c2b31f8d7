"""Resumable training checkpoints with megatron-core `dist_checkpointing` (DESIGN §1).

A checkpoint holds the student model, the distributed-optimizer state, the LR schedule, the optimizer
step (TIDAL progress = step / total steps, spec §3, §9.14), every rank's RNG states and the data
position. It is written to ``<root>/.tmp-step_XXXXXXX`` and renamed to ``<root>/step_XXXXXXX`` only
once every rank has finished, so a killed save never looks like a checkpoint; ``<root>/latest`` names
the newest one. Only the last N are kept. The teacher is frozen and is never checkpointed: with
``teacher.placement=separate`` the teacher pool's ranks join every save and load (dist_checkpointing's
collectives span the world) with their RNG states only (``model=None``).

A save that fails (a full disk, a dead writer) removes its temporary directory, keeps the previous
checkpoint and raises `CheckpointSaveError` naming the path and the bytes a checkpoint needs; free space is
checked before and after every save against that size, with a warning while there is still time to act.
Each checkpoint records the run's fingerprint (seed, data, models, objective mode): `resolve_resume` refuses
a checkpoint written by a different run unless ``checkpoint.resume=force``. Reads and writes go through
`distributed.checkpoint_io` (no pickled code is ever run; helpers survive a job-wide SIGTERM).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import re
import shutil
import sys
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import torch.distributed as dist
from megatron.core.dist_checkpointing.dict_utils import nested_values
from megatron.core.dist_checkpointing.mapping import ShardedObject, ShardedTensor, is_main_replica
from megatron.core.process_groups_config import ProcessGroupCollection
from megatron.core.tensor_parallel.random import get_cuda_rng_tracker
from torch.distributed.checkpoint.api import CheckpointException

from tide_megatron.atomic import publish, write_text_atomic
from tide_megatron.distributed import checkpoint_io
from tide_megatron.distributed.checkpoint_io import CheckpointError
from tide_megatron.training.optimizer import prepare_optimizer_for_loading, restore_adam_step_counts

STEP_DIR = re.compile(r"^step_(\d{7,})$")
COMPLETE_MARKER = "tide_checkpoint.json"
FORMAT_VERSION = 1
# 'dp_reshardable': each data-parallel rank writes its own optimizer shard, no gather (fully parallel).
OPTIMIZER_SHARDING = "dp_reshardable"


FORCE_RESUME = "force"  # checkpoint.resume value: the newest checkpoint even if its fingerprint differs
# Warn when the free space is below this many checkpoints' worth (the save writes a new one before pruning).
LOW_SPACE_CHECKPOINTS = 1.5


class CheckpointSaveError(CheckpointError):
    """A save failed; its temporary directory is gone and the previous checkpoint is untouched."""


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
                    pgs: Optional[ProcessGroupCollection], config_yaml: str = "", keep_last: int = 2,
                    fingerprint: Optional[dict] = None) -> str:
    """Write one checkpoint atomically (collective over the world); returns its final directory. A rank without
    a student (``model=None``: a separate teacher pool) contributes its RNG states.

    On failure the temporary directory is removed on rank 0 and `CheckpointSaveError` is raised.
    """
    root_path = Path(root)
    final = root_path / step_dir_name(train_state.step)
    tmp = root_path / f".tmp-{final.name}"
    rank = dist.get_rank()
    if rank == 0:
        root_path.mkdir(parents=True, exist_ok=True)
        # Saves killed mid-way, or while publishing (one writer per directory: the run lock).
        for stale in [*root_path.glob(".tmp-step_*"), *root_path.glob(".step_*.old-*")]:
            shutil.rmtree(stale, ignore_errors=True)
        tmp.mkdir()
    dist.barrier()
    state = _sharded_state_dict(model, optimizer, pgs, is_loading=False)
    state["train_state"] = train_state.to_dict()
    if scheduler is not None:
        state["lr_scheduler"] = scheduler.state_dict()
    state["format_version"] = FORMAT_VERSION
    needed = _checkpoint_bytes(root_path, state)
    if rank == 0:
        _warn_if_low_space(root_path, needed, "this save may fail")
    try:
        checkpoint_io.save(state, str(tmp), shared_common=_shared_common_state)
        dist.barrier()
        if rank == 0:
            (tmp / "config.yaml").write_text(config_yaml)
            marker = {"format_version": FORMAT_VERSION, "world_size": dist.get_world_size(), **train_state.to_dict()}
            if fingerprint is not None:
                marker["fingerprint"] = fingerprint
            write_text_atomic(tmp / COMPLETE_MARKER, json.dumps(marker, indent=1))
    except (Exception, CheckpointException) as err:  # CheckpointException is a BaseException
        if rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointSaveError(_save_failure_message(err, root_path, tmp, needed)) from err
    if rank == 0:
        publish(tmp, final)  # replaces a re-save of the same step (e.g. a signal right after a periodic save)
        write_text_atomic(root_path / "latest", final.name + "\n")
        _prune(root_path, keep_last)
        _warn_if_low_space(root_path, checkpoint_io.directory_bytes(final), "the next save may fail")
    dist.barrier()
    return str(final)


def _shared_common_state(common: dict) -> dict:
    """The common entries every rank holds (the LR schedule lives on student ranks only)."""
    return {k: v for k, v in common.items() if k != "lr_scheduler"}


def _checkpoint_bytes(root: Path, state: dict) -> int:
    """About how many bytes a checkpoint takes: the newest one on disk, or the tensors every rank will write."""
    mine = sum(t.data.numel() * t.data.element_size() for t in nested_values(state)
               if isinstance(t, ShardedTensor) and t.data is not None and is_main_replica(t.replica_id))
    sizes: list = [None] * dist.get_world_size()
    dist.all_gather_object(sizes, mine)
    previous = list_checkpoints(str(root))
    return max(sum(sizes), checkpoint_io.directory_bytes(previous[-1]) if previous else 0)


def _free_bytes(path: Path) -> int:
    """Free bytes on the filesystem holding ``path`` (or its nearest existing parent)."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


def _warn_if_low_space(root: Path, needed: int, consequence: str) -> None:
    free = _free_bytes(root)
    if free < LOW_SPACE_CHECKPOINTS * needed:
        print(f"warning: checkpoint.dir {root}: {free} bytes free, a checkpoint needs about {needed}; "
              f"{consequence} (free space, or lower checkpoint.keep_last)", file=sys.stderr, flush=True)


def _errors_in(err: BaseException) -> list[BaseException]:
    """``err``, its causes and contexts, and the per-rank failures torch's CheckpointException carries."""
    seen: list[BaseException] = []
    todo = [err]
    while todo:
        e = todo.pop()
        if e is None or any(e is s for s in seen):
            continue
        seen.append(e)
        todo += [e.__cause__, e.__context__]
        if isinstance(e, CheckpointException):
            todo += [exc for exc, _ in e.failures.values()]
    return seen


def _save_failure_message(err: BaseException, root: Path, tmp: Path, needed: int) -> str:
    previous = list_checkpoints(str(root))
    kept = f"the previous checkpoint {previous[-1]} is kept" if previous else "there is no previous checkpoint"
    # The writers' errors reach this rank through pickles that drop __cause__: match the message as well.
    # torch's zip writer may report a short write on a full disk without its errno ("unexpected pos ..."), so
    # a failed save that leaves less room than one checkpoint (the partial directory already removed) is one.
    free = _free_bytes(root)
    if free < needed or any((isinstance(e, OSError) and e.errno == errno.ENOSPC) or os.strerror(errno.ENOSPC)
                            in str(e) for e in _errors_in(err)):
        return (f"checkpoint save to {tmp} failed: no space left on device ({free} bytes free on "
                f"{root}, a checkpoint needs about {needed}); the partial directory was removed and {kept}")
    first = next((e for e in reversed(_errors_in(err)) if not isinstance(e, CheckpointException)), err)
    detail = (str(first).strip().splitlines() or [""])[0][:300]
    return (f"checkpoint save to {tmp} failed: {type(first).__name__}: {detail}; the partial directory was removed "
            f"and {kept}")


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


def resolve_resume(resume: str, root: str, fingerprint: Optional[dict] = None) -> Optional[str]:
    """Which checkpoint to load: ``none`` → None; ``auto`` → the newest in ``root`` (None if empty); ``force``
    → the same, accepting a different run's fingerprint; else the path.

    The chosen directory is validated, so a corrupt, partial or foreign one is a clear error before any work.
    """
    if resume == "none":
        return None
    if resume in ("auto", FORCE_RESUME):
        steps = list_checkpoints(root)
        if not steps:
            return None
        latest_file = Path(root) / "latest"
        chosen = steps[-1]
        if latest_file.is_file():
            named = Path(root) / latest_file.read_text().strip()
            if named.is_dir() and named != chosen:
                chosen = max(named, chosen, key=lambda c: int(STEP_DIR.match(c.name).group(1)))
        path = str(chosen)
    else:
        path = resume
    info = validate_checkpoint_dir(path)
    if fingerprint is not None and resume != FORCE_RESUME:
        check_fingerprint(path, info.get("fingerprint"), fingerprint)
    return path


def run_fingerprint(cfg, train_data) -> dict:
    """What a resumed run must share with the run that wrote its checkpoint: seed, data, models, objective mode.

    The data and the models are identified by content (the dataset's meta.json without its summary, plus its
    length; each model's config.json), so moving a directory keeps the fingerprint.
    """
    meta = {k: v for k, v in getattr(train_data, "meta", {}).items() if k != "summary"}
    out = {"seed": cfg.optim.seed, "mode": cfg.objective.mode,
           "data": _digest({"meta": meta, "samples": len(train_data)}),
           "student": _model_digest(cfg.student.checkpoint)}
    if cfg.objective.needs_teacher:
        out["teacher"] = _model_digest(cfg.teacher.checkpoint)
    return out


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _model_digest(checkpoint: str) -> str:
    """The model's config.json (an HF directory, or the ``hf/`` assets of a converted one), hashed."""
    for candidate in (Path(checkpoint, "config.json"), Path(checkpoint, "hf", "config.json")):
        if candidate.is_file():
            return hashlib.sha256(candidate.read_bytes()).hexdigest()[:16]
    return _digest(checkpoint)


def check_fingerprint(path: str, saved: Optional[dict], current: dict) -> None:
    """Refuse a checkpoint written by a run with another seed, data, model or mode (`CheckpointError`)."""
    if saved is None:  # written before fingerprints were recorded: nothing to compare
        return
    differ = [f"{k}: checkpoint {saved.get(k)!r}, this run {current.get(k)!r}"
              for k in sorted(set(saved) | set(current)) if saved.get(k) != current.get(k)]
    if differ:
        raise CheckpointError(f"checkpoint {path!r} was written by a different run ({'; '.join(differ)}); refusing "
                              f"to resume it. Use another output_dir (or checkpoint.dir), or set "
                              f"checkpoint.resume={FORCE_RESUME} to resume it anyway")


def load_checkpoint(path: str, model, optimizer, scheduler, pgs: Optional[ProcessGroupCollection]) -> TrainState:
    """Restore model, optimizer, LR schedule and this rank's RNG states; return the saved progress (collective;
    ``model=None`` restores the RNG states and the progress only)."""
    info = validate_checkpoint_dir(path)
    if info.get("world_size") not in (None, dist.get_world_size()):
        raise CheckpointError(f"checkpoint {path!r} was written by {info['world_size']} ranks; this job has "
                              f"{dist.get_world_size()} (RNG states and data positions are per rank)")
    state = _sharded_state_dict(model, optimizer, pgs, is_loading=True)
    loaded = checkpoint_io.load(state, path)  # errors name the directory and the failing file
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

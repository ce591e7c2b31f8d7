"""Every megatron-core dist checkpoint this project reads or writes goes through `load` and `save`.

Trust boundary: a checkpoint directory is data, never code. torch's distributed-checkpoint format stores its
``.metadata`` as a plain pickle and megatron's sharded objects (RNG states, optimizer step counts) as pickles
inside the ``.distcp`` shards; unpickled as torch does it, a replaced file runs arbitrary code. `load` reads
``.metadata`` with an unpickler that builds only the metadata classes torch writes, and every other pickle of
the checkpoint with torch's ``weights_only`` unpickler (tensors, containers, plain numbers and strings, plain
numpy arrays); anything else is refused with `UnsafeCheckpointError` before it is constructed. It also checks
that every shard file the metadata names exists and is long enough, so a missing or truncated shard is one
error naming the file.

`save` is dist_checkpointing's synchronous save with two changes that keep a preemption checkpoint alive when
the scheduler signals every process of the job: the writers' results are collected in this process (no
multiprocessing Manager, a server process the signal would kill), and the writer processes it forks ignore
the job's signals and die with this process (`distributed.lifetime`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import importlib
import os
import pickle
import queue
import re
from typing import Any, Iterator, Optional

import torch
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.api import CheckpointException

from tide_megatron.distributed.lifetime import children_tied_to_this_process

METADATA_FILE = ".metadata"
# Modules whose dataclasses and enums make up torch's checkpoint metadata (and nothing else).
_METADATA_MODULES = ("torch.distributed.checkpoint.metadata", "torch.distributed.checkpoint.planner",
                     "torch.distributed.checkpoint.filesystem")
_METADATA_GLOBALS = {("torch", "Size"), ("torch.serialization", "_get_layout"),
                     ("collections", "OrderedDict"), ("builtins", "set"), ("builtins", "frozenset")}


class CheckpointError(RuntimeError):
    """A checkpoint directory is missing, partial, corrupt or unsafe; the message names it."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint file asks to build something other than checkpoint data (a tampered or foreign file)."""


class _MetadataUnpickler(pickle.Unpickler):
    """Builds only torch's checkpoint-metadata classes, tensor sizes and dtypes; refuses every other global."""

    def __init__(self, file, path: str):
        super().__init__(file)
        self.path = path

    def find_class(self, module: str, name: str) -> Any:
        if _allowed_metadata_global(module, name):
            return super().find_class(module, name)
        raise UnsafeCheckpointError(
            f"{self.path}: refusing to load: it asks to build {module}.{name}, which is not one of the metadata "
            f"classes torch writes there (a tampered or foreign file; checkpoints are data, never code)")


def _allowed_metadata_global(module: str, name: str) -> bool:
    if (module, name) in _METADATA_GLOBALS:
        return True
    if "." in name or name.startswith("__"):
        return False
    if module == "torch":  # dtypes, layouts and memory formats are named torch attributes
        return isinstance(getattr(torch, name, None), (torch.dtype, torch.layout, torch.memory_format))
    if module not in _METADATA_MODULES:
        return False
    obj = getattr(importlib.import_module(module), name, None)
    return isinstance(obj, type) and (dataclasses.is_dataclass(obj) or issubclass(obj, enum.Enum))


def read_metadata(checkpoint_dir: str, rank: Optional[int] = None):
    """torch's checkpoint `Metadata` of ``checkpoint_dir``, read with the restricted unpickler."""
    name = METADATA_FILE if rank is None else f"__{rank}{METADATA_FILE}"
    path = os.path.join(checkpoint_dir, name)
    try:
        with open(path, "rb") as fh:
            metadata = _MetadataUnpickler(fh, path).load()
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing (not a complete torch distributed checkpoint)") from None
    except UnsafeCheckpointError:
        raise
    except Exception as err:  # a truncated or garbled pickle
        raise CheckpointError(f"{path}: unreadable ({type(err).__name__}: {err}); the checkpoint is corrupt") from None
    from torch.distributed.checkpoint.metadata import Metadata

    if not isinstance(metadata, Metadata):
        raise UnsafeCheckpointError(f"{path}: holds a {type(metadata).__name__}, not torch checkpoint Metadata")
    return metadata


def check_shard_files(checkpoint_dir: str, metadata=None) -> None:
    """Every shard file the metadata points into exists and holds the bytes it should; errors name the file."""
    metadata = metadata if metadata is not None else read_metadata(checkpoint_dir)
    needed: dict[str, int] = {}
    for info in (metadata.storage_data or {}).values():
        path = str(info.relative_path)
        needed[path] = max(needed.get(path, 0), int(info.offset) + int(info.length))
    for rel, size in sorted(needed.items()):
        path = os.path.join(checkpoint_dir, rel)
        if not os.path.isfile(path):
            raise CheckpointError(f"{path}: shard missing (the checkpoint's {METADATA_FILE} lists it); the "
                                  f"checkpoint is incomplete")
        have = os.path.getsize(path)
        if have < size:
            raise CheckpointError(f"{path}: shard truncated: {have} bytes, the checkpoint's {METADATA_FILE} needs "
                                  f"{size}; the checkpoint is incomplete (an interrupted copy?)")


_NUMPY_ARRAY_GLOBALS: Optional[list] = None


def _numpy_array_globals() -> list:
    """What torch's weights-only unpickler needs for plain numpy arrays (numpy's RNG state holds one)."""
    global _NUMPY_ARRAY_GLOBALS
    if _NUMPY_ARRAY_GLOBALS is None:
        import numpy as np

        core = getattr(np, "_core", None) or np.core
        _NUMPY_ARRAY_GLOBALS = [core.multiarray._reconstruct, np.ndarray, np.dtype]
        _NUMPY_ARRAY_GLOBALS += [getattr(np.dtypes, n) for n in ("UInt32DType", "Int64DType", "Float64DType")
                                 if hasattr(getattr(np, "dtypes", None), n)]
    return _NUMPY_ARRAY_GLOBALS


@contextlib.contextmanager
def _restricted_unpickling(checkpoint_dir: str) -> Iterator[None]:
    """While loading: ``.metadata`` through `_MetadataUnpickler`, every ``torch.load`` weights-only."""
    original_load, original_read = torch.load, FileSystemReader.read_metadata

    def weights_only_load(f, *args, **kwargs):
        kwargs["weights_only"] = True
        try:
            with torch.serialization.safe_globals(_numpy_array_globals()):
                return original_load(f, *args, **kwargs)
        except pickle.UnpicklingError as err:
            raise UnsafeCheckpointError(
                f"{checkpoint_dir}: refusing to load an object of the checkpoint: {_refused_global(err)} (only "
                f"tensors, containers, numbers, strings and plain numpy arrays are accepted; checkpoints are data, "
                f"never code)") from None

    def read_metadata_restricted(reader, *args, **kwargs):
        metadata = read_metadata(str(reader.path), kwargs.get("rank"))
        from torch.distributed.checkpoint.metadata import StorageMeta

        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = reader.load_id
        return metadata

    torch.load, FileSystemReader.read_metadata = weights_only_load, read_metadata_restricted
    try:
        yield
    finally:
        torch.load, FileSystemReader.read_metadata = original_load, original_read


def _refused_global(err: pickle.UnpicklingError) -> str:
    """What torch's weights-only unpickler refused, from its long message."""
    text = str(err)
    m = re.search(r"GLOBAL ([\w.]+)", text)  # "Unsupported global: GLOBAL x.y" / "unsupported GLOBAL x.y whose ..."
    if m:
        return f"it asks to build {m.group(1)}"
    m = re.search(r"WeightsUnpickler error: ([^\n]+)", text)
    return (m.group(1) if m else text.strip().splitlines()[0])[:300]


def load(sharded_state_dict: dict, checkpoint_dir: str) -> dict:
    """``dist_checkpointing.load`` of an untrusted directory: refuses code, names missing or truncated files."""
    from megatron.core import dist_checkpointing

    checkpoint_dir = str(checkpoint_dir)
    if not os.path.isdir(checkpoint_dir):
        raise CheckpointError(f"{checkpoint_dir}: no such checkpoint directory")
    check_shard_files(checkpoint_dir)
    try:
        with _restricted_unpickling(checkpoint_dir):
            return dist_checkpointing.load(sharded_state_dict, checkpoint_dir)
    except CheckpointException as err:  # a BaseException: `except Exception` misses it
        raise _first_failure(err, checkpoint_dir) from None
    except CheckpointError:
        raise
    except Exception as err:  # megatron's own checks (CheckpointingException, KeyError on a missing entry, ...)
        raise CheckpointError(f"{checkpoint_dir}: could not be loaded: {type(err).__name__}: "
                              f"{_first_line(err)}") from err


def _first_failure(err: CheckpointException, checkpoint_dir: str) -> CheckpointError:
    failures = [exc for exc, _ in err.failures.values()]
    for exc in failures:
        if isinstance(exc, CheckpointError):
            return exc
    exc = failures[0] if failures else err
    return CheckpointError(f"{checkpoint_dir}: could not be loaded (ranks {sorted(err.failures)}): "
                           f"{type(exc).__name__}: {_first_line(exc)}")


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return (text.splitlines() or [""])[0][:500]


def save(sharded_state_dict: dict, checkpoint_dir: str) -> None:
    """``dist_checkpointing.save`` (synchronous) that survives a signal to the whole job; collective."""
    from megatron.core import dist_checkpointing

    _collect_write_results_in_process()
    with children_tied_to_this_process():
        dist_checkpointing.save(sharded_state_dict, str(checkpoint_dir))


def _collect_write_results_in_process() -> None:
    """A synchronous save runs its writer coordination in this process, so a thread queue carries the results;
    megatron's default is a multiprocessing Manager (a server process that a job-wide SIGTERM kills, and
    that outlives a killed trainer)."""
    from megatron.core.dist_checkpointing.strategies import filesystem_async

    if not isinstance(filesystem_async._results_queue, queue.Queue):
        filesystem_async._results_queue = queue.Queue()


def directory_bytes(path: str | os.PathLike) -> int:
    """Bytes held by the files under ``path`` (0 if it does not exist)."""
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.path.getsize(os.path.join(root, name))
            except OSError:
                pass
    return total

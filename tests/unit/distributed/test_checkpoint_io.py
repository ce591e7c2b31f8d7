"""checkpoint_io: a dist checkpoint round-trips through the guarded loader; anything that is code is refused."""

import os
import pickle
import queue

import numpy as np
import psutil
import pytest
import torch

from tide_megatron.distributed import checkpoint_io, init_distributed
from tide_megatron.distributed.checkpoint_io import CheckpointError, UnsafeCheckpointError


def _state(seed: int) -> dict:
    from megatron.core.dist_checkpointing.mapping import ShardedObject, ShardedTensor

    g = torch.Generator().manual_seed(seed)
    return {"w": ShardedTensor.from_rank_offsets("w", torch.randn(4, 3, generator=g)),
            "rng": ShardedObject("rng", {"numpy": np.random.RandomState(seed).get_state(), "step": seed,
                                         "torch": torch.get_rng_state()}, (1,), (0,), replica_id=0)}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    init_distributed()
    path = tmp_path_factory.mktemp("ckpt") / "c"
    path.mkdir()
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    checkpoint_io.save(_state(1), str(path))
    from megatron.core.dist_checkpointing.strategies import filesystem_async

    assert isinstance(filesystem_async._results_queue, queue.Queue)  # no Manager process
    assert {p.pid for p in psutil.Process().children(recursive=True)} <= before  # the writers are gone
    return path


def test_what_torch_and_megatron_write_loads_back(saved):
    loaded = checkpoint_io.load(_state(2), str(saved))
    expected = _state(1)
    torch.testing.assert_close(loaded["w"], expected["w"].data)
    assert loaded["rng"]["step"] == 1
    np.testing.assert_array_equal(loaded["rng"]["numpy"][1], expected["rng"].data["numpy"][1])
    meta = checkpoint_io.read_metadata(str(saved))
    assert type(meta).__name__ == "Metadata"


@pytest.mark.parametrize("module, name, allowed", [
    ("torch.distributed.checkpoint.metadata", "TensorStorageMetadata", True),
    ("torch.distributed.checkpoint.metadata", "_MEM_FORMAT_ENCODING", True),
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo", True),
    ("torch", "bfloat16", True), ("torch", "Size", True), ("torch", "load", False),
    ("torch.distributed.checkpoint.planner", "SavePlanner", False),  # a class with behaviour, not data
    ("torch.distributed.checkpoint.filesystem", "FileSystemReader", False),
    ("posix", "system", False), ("builtins", "eval", False), ("builtins", "getattr", False),
    ("torch.distributed.checkpoint.metadata", "os.system", False),
])
def test_only_metadata_classes_are_allowed(module, name, allowed):
    assert checkpoint_io._allowed_metadata_global(module, name) is allowed


class _Code:
    def __reduce__(self):
        return eval, ("1 + 1",)


def test_a_metadata_that_is_code_or_garbage_is_refused(saved, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / ".metadata").write_bytes(pickle.dumps(_Code()))
    with pytest.raises(UnsafeCheckpointError, match=r"\.metadata: refusing to load: it asks to build builtins\.eval"):
        checkpoint_io.load(_state(2), str(bad))
    (bad / ".metadata").write_bytes(os.urandom(64))
    with pytest.raises(CheckpointError, match=r"\.metadata: unreadable \(.*\); the checkpoint is corrupt"):
        checkpoint_io.load(_state(2), str(bad))
    with pytest.raises(CheckpointError, match="no such checkpoint directory"):
        checkpoint_io.load(_state(2), str(tmp_path / "nowhere"))


def test_the_restrictions_are_lifted_after_a_load(saved):
    checkpoint_io.load(_state(2), str(saved))
    from torch.distributed.checkpoint import FileSystemReader

    assert FileSystemReader.read_metadata.__name__ == "read_metadata"
    assert torch.load.__module__ == "torch.serialization"

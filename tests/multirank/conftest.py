"""Multi-rank suite: one gloo world of 2 ranks for the whole pytest session (launched by torchrun)."""

import os

import pytest
import torch.distributed as dist

from tide_megatron.distributed import init_distributed


@pytest.fixture(scope="session", autouse=True)
def world() -> tuple[int, int]:
    """Initialise the gloo world once; every test shares it."""
    rank, world_size = init_distributed(backend="gloo", timeout_s=int(os.environ.get("TIDE_DIST_TIMEOUT_S", "180")))
    assert world_size == 2, "the multi-rank suite expects exactly 2 ranks"
    yield rank, world_size
    dist.barrier()


@pytest.fixture(autouse=True)
def _reset_megatron_state():
    """Each test starts and ends without megatron global model-parallel state."""
    from megatron.core import parallel_state

    parallel_state.destroy_model_parallel()
    yield
    parallel_state.destroy_model_parallel()

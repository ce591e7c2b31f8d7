"""Fixtures shared by the multi-rank suites (tests/multirank: 2 ranks, tests/multirank4: 4 ranks).

Each suite runs as one `torchrun -m pytest` session over one gloo world. Its conftest imports these fixtures
and defines `world` for its size with `world_fixture(n)`.
"""

from __future__ import annotations

import gc
import os

import pytest
import torch.distributed as dist

from tide_megatron.distributed import init_distributed
from tide_megatron.distributed.init import destroy_megatron_parallel_state

#: Threads a test may leave behind beyond the session's steady state. A leaked gloo group costs 3 per rank,
#: so a test that leaks its grids' groups (~20 each) fails here instead of slowing the rest of the suite.
THREAD_SLACK = 24


def thread_count() -> int:
    """Threads of this process (gloo run loops and TCP loops included), after collecting garbage: a destroyed
    group's threads end only when the last module holding it is freed."""
    gc.collect()
    return len(os.listdir(f"/proc/{os.getpid()}/task"))


def world_fixture(size: int):
    """A session fixture initialising the gloo world once (every test shares it) and checking its size."""

    @pytest.fixture(scope="session", autouse=True)
    def world() -> tuple[int, int]:
        rank, world_size = init_distributed(backend="gloo",
                                            timeout_s=int(os.environ.get("TIDE_DIST_TIMEOUT_S", "180")))
        assert world_size == size, f"this suite expects exactly {size} ranks (torchrun --nproc_per_node={size})"
        yield rank, world_size
        dist.barrier()

    return world


@pytest.fixture(scope="session")
def _thread_baseline() -> dict:
    return {}


@pytest.fixture(autouse=True)
def _no_leaked_threads(_thread_baseline, request):
    """Threads per rank stay flat across tests: identical rank sets share one group and closed grids free theirs."""
    yield
    now = thread_count()
    base = _thread_baseline.setdefault("threads", now)
    assert now <= base + THREAD_SLACK, (
        f"{request.node.nodeid} left {now - base} more threads than the first test ({now} vs {base}): "
        f"a process group or thread leaked")


@pytest.fixture(autouse=True)
def _reset_megatron_state():
    """Each test starts and ends without megatron global model-parallel state (its groups destroyed)."""
    destroy_megatron_parallel_state()
    yield
    destroy_megatron_parallel_state()


@pytest.fixture
def closing():
    """``closing(obj)`` returns obj and closes it after the test (collective closes run in the same order on every rank)."""
    held = []

    def hold(obj):
        held.append(obj)
        return obj

    yield hold
    for obj in reversed(held):
        obj.close()

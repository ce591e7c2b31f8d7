"""Model tests build megatron models on process groups: give the session a world of one."""

import pytest

from tide_megatron.distributed import init_distributed


@pytest.fixture(scope="session", autouse=True)
def single_rank_world():
    init_distributed(backend="gloo")
    yield

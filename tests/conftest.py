"""Test-session set-up shared by the single-process and the multi-rank suites."""

import os

os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")  # mcore's jit_fuser = torch.compile: 4-23 s per cold kernel
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402

from tide_megatron.distributed import cpu_compat  # noqa: E402

UNDER_TORCHRUN = "LOCAL_RANK" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1

# Multi-rank tests run only inside `torchrun --nproc_per_node=2 -m pytest tests/multirank` and
# `torchrun --nproc_per_node=4 -m pytest tests/multirank4` sessions.
collect_ignore_glob = [] if UNDER_TORCHRUN else ["multirank/*", "multirank4/*"]

cpu_compat.apply()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: takes more than a few seconds; still runs in CI")

"""Multi-rank suite: one gloo world of 2 ranks for the whole pytest session (launched by torchrun)."""

from tests.helpers.world import _no_leaked_threads, _reset_megatron_state, _thread_baseline, closing, world_fixture  # noqa: F401

world = world_fixture(2)

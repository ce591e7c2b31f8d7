"""Four-rank suite: layouts that combine parallelisms (EP x TP, PP x EP, TP x DP...), one gloo world of 4 ranks
for the whole pytest session (`torchrun --nproc_per_node=4`; 4 ranks time-share 2 cores, so models stay tiny)."""

from tests.helpers.world import _no_leaked_threads, _reset_megatron_state, _thread_baseline, closing, world_fixture  # noqa: F401

world = world_fixture(4)

"""The student's FP8 amax reduction runs over its own group, not the whole world (training/fp8.py).

megatron-core 0.16.1 builds each FP8 context in `fp8_utils.get_fp8_context` from the global parallel_state,
which this project never initialises (Transformer Engine would then reduce over the world). Without TE that
function is a no-op here, so the test drives the wrapper with a stand-in that asks parallel_state exactly the
two questions megatron's TE branch asks, and checks megatron's source still asks them.
"""

import inspect

import torch.distributed as dist
from megatron.core import fp8_utils, parallel_state
from megatron.core.transformer import transformer_block
from megatron.core.transformer.transformer_config import TransformerConfig

from tide_megatron.distributed import ParallelLayout, build_model_grid, init_distributed
from tide_megatron.training.fp8 import amax_reduction_group, fp8_context_with_registered_group, use_amax_reduction_group


def _megatron_question(config, layer_no=-1, is_init=False):
    """What fp8_utils.get_fp8_context's TE branch computes as ``fp8_group``."""
    if parallel_state.model_parallel_is_initialized():
        return parallel_state.get_amax_reduction_group(with_context_parallel=True,
                                                       tp_only_amax_red=config.tp_only_amax_red)
    return None


def _config(**kw):
    return TransformerConfig(num_layers=1, hidden_size=8, num_attention_heads=2, use_cpu_initialization=True, **kw)


def test_megatron_still_takes_the_group_from_parallel_state():
    source = inspect.getsource(fp8_utils)
    assert "parallel_state.model_parallel_is_initialized()" in source
    assert "parallel_state.get_amax_reduction_group(" in source
    assert "fp8_group=fp8_group" in source


def test_registered_student_config_gets_its_group_others_keep_megatrons_default():
    init_distributed("gloo")
    with build_model_grid(ParallelLayout(), "fp8-student") as grid:
        student, other = _config(), _config()
        use_amax_reduction_group(student, grid.pgs.tp_dp_cp, grid.pgs.tp_cp)
        wrapped = fp8_context_with_registered_group(_megatron_question)
        asked = parallel_state.model_parallel_is_initialized, parallel_state.get_amax_reduction_group
        assert wrapped(student) is grid.pgs.tp_dp_cp
        assert wrapped(other) is _megatron_question(other)  # not registered: megatron's own answer
        # parallel_state answers for the student only while its context is built
        assert (parallel_state.model_parallel_is_initialized, parallel_state.get_amax_reduction_group) == asked
        tp_only = _config(tp_only_amax_red=True)
        use_amax_reduction_group(tp_only, grid.pgs.tp_dp_cp, grid.pgs.tp_cp)
        assert wrapped(tp_only) is grid.pgs.tp_cp
        assert amax_reduction_group(student) is grid.pgs.tp_dp_cp
        # The hook sits where megatron's TransformerBlock and fp8_utils look the function up.
        for module in (transformer_block, fp8_utils):
            assert hasattr(module.get_fp8_context, "tide_original")
        assert dist.get_world_size(grid.pgs.tp_dp_cp) == dist.get_world_size()

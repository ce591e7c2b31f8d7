"""SDPA's CPU banded path (models/attention.py `tile_bands`) against one dense SDPA call on the explicit mask:
values and q/k/v gradients for the block-diffusion layouts (both orders, padding, compacted inputs with skipped
blocks, several xt passes, the last layer's query rows), and the cases that must stay dense."""

import pytest
import torch
from megatron.core.models.gpt.gpt_model import GPTModel  # noqa: F401  (megatron import order)

from tide_megatron.diffusion import block_diffusion_mask
from tide_megatron.distributed import ParallelLayout, build_model_grid
from tide_megatron.models.attention import SDPACoreAttention, tile_bands
from tide_megatron.models.attention_mask import BlockDiffusionMask, KeyPaddingMask
from tide_megatron.teacher.passes import compact_teacher_inputs
from tide_megatron.training.compact import compact_student_inputs
from tests.helpers.core_attention import core_attention_args, forward_backward

HEADS, GROUPS, HEAD_DIM = 4, 2, 16


@pytest.fixture(scope="module")
def grid():
    with build_model_grid(ParallelLayout(), "tile-bands-test") as g:
        yield g


def _core(grid, band_rows=16, tile_cols=8):
    core = SDPACoreAttention(**core_attention_args(grid, HEADS, GROUPS, HEAD_DIM, use_cpu_initialization=True))
    core.band_rows, core.tile_cols = band_rows, tile_cols
    return core


def assert_banded_equals_dense(grid, spec, b, S, query_rows=None, seed=0):
    """The description (banded) and the same mask as a plain tensor (dense, one call) give the same values and
    gradients, and the banded plan really skipped tiles."""
    g = torch.Generator().manual_seed(seed)
    qkv = [torch.randn(S, b, n, HEAD_DIM, generator=g, dtype=torch.float64).float() for n in (HEADS, GROUPS, GROUPS)]
    weight = torch.randn(S, b, HEADS * HEAD_DIM, generator=g)
    core = _core(grid)
    core.query_rows = query_rows
    dense_mask = spec.blocked().clone()  # a tensor: always the one dense call
    want = forward_backward(core, dense_mask, qkv, weight)
    got = forward_backward(core, spec, qkv, weight)
    rows = S if query_rows is None else query_rows
    plan = spec._cache[("tile_bands", rows, core.band_rows, core.tile_cols)]
    assert plan is not None and plan.live_fraction < 0.6, "the banded path did not run"
    for name, w, o in zip(("out", "dq", "dk", "dv"), want, got):
        torch.testing.assert_close(o, w, atol=2e-5, rtol=2e-5, msg=lambda m: f"{name}: {m}")
    assert want[0].abs().max() > 0.1 and want[2].abs().max() > 0.1  # not a trivially zero comparison


@pytest.mark.parametrize("order", ["xt_x0", "x0_xt"])
def test_both_orders(grid, order):
    b, L, B = 2, 64, 16
    spec = BlockDiffusionMask.halves(b, L, B, order)
    assert torch.equal(spec.dense_allowed()[0, 0], block_diffusion_mask(L, B, order))
    assert_banded_equals_dense(grid, spec, b, 2 * L)


def test_the_last_layers_query_rows(grid):
    b, L, B = 2, 64, 16
    assert_banded_equals_dense(grid, BlockDiffusionMask.halves(b, L, B), b, 2 * L, query_rows=L)


def test_compacted_student_inputs_with_skipped_blocks_and_padding(grid):
    g = torch.Generator().manual_seed(5)
    b, L, B = 3, 128, 16
    x0 = torch.randint(0, 100, (b, L), generator=g)
    masked = torch.rand(b, L, generator=g) < 0.08
    masked[2] = False
    masked[2, 40] = True  # one sequence keeps a single block: the rest of its row is padding
    c = compact_student_inputs(torch.where(masked, 101, x0), x0, masked, B, pad_id=0)
    assert (c.mask.segment < 0).any()
    assert_banded_equals_dense(grid, c.mask, b, c.ids.shape[1], query_rows=c.xt_rows)


def test_several_xt_passes_with_key_padding(grid):
    g = torch.Generator().manual_seed(3)
    P, b, L, B = 2, 2, 64, 16
    x0 = torch.randint(0, 100, (b, L), generator=g)
    xts = torch.where(torch.rand(P, b, L, generator=g) < 0.5, 101, x0[None])
    c = compact_teacher_inputs(x0, xts, torch.ones(P, b, L // B, dtype=torch.bool), B, pad_id=0)
    real = torch.ones(b, L, dtype=torch.bool)
    real[1, 40:] = False
    key_valid = (c.segment >= 0) & real.gather(1, c.position_ids)
    assert not key_valid.all()
    assert_banded_equals_dense(grid, BlockDiffusionMask(c.segment, c.block, key_valid), b, c.ids.shape[1])


def test_dense_masks_and_rows_without_keys_stay_one_call():
    b, S = 2, 64
    valid = torch.ones(b, S, dtype=torch.bool)
    valid[0, 50:] = False
    assert tile_bands(KeyPaddingMask(valid).blocked(), 16, 8) is None  # nearly every tile live
    blocked = BlockDiffusionMask.halves(b, S // 2, 8).blocked().clone()
    assert tile_bands(blocked, 16, 8) is not None
    blocked[1, 0, 5] = True  # a query row that sees no key: the dense path's uniform softmax, never a band's
    assert tile_bands(blocked, 16, 8) is None

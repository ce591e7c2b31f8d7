"""GPU-only: the compiled FlexAttention kernel and Transformer Engine's fused padding attention against SDPA with
the explicit mask (values and q/k/v gradients). Skipped without CUDA (and, for TE, without a usable TE); the
CPU parity of the same modules is in test_flex_attention.py."""

import pytest
import torch

from tide_megatron.distributed import ParallelLayout, build_model_grid
from tide_megatron.models.attention import SDPACoreAttention
from tide_megatron.models.attention_mask import BlockDiffusionMask, KeyPaddingMask
from tide_megatron.models.flex_attention import FlexCoreAttention
from tide_megatron.models.transformer_engine import transformer_engine_available
from tests.helpers.core_attention import core_attention_args, forward_backward

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

HEADS, GROUPS, HEAD_DIM = 8, 4, 64


@pytest.fixture(autouse=True)
def dynamo_on(monkeypatch):
    """The suite disables TorchDynamo (TORCHDYNAMO_DISABLE=1, for megatron's CPU jit fusers); the GPU kernel
    under test is torch.compile(flex_attention)."""
    monkeypatch.setattr(torch._dynamo.config, "disable", False)


@pytest.fixture(scope="module")
def grid():
    with build_model_grid(ParallelLayout(), "gpu-attention") as g:
        yield g


def _run(core, mask, qkv, weight):
    return [t.float() for t in forward_backward(core, mask, qkv, weight)]


def _compare(grid, core_cls, mask, S, b=2):
    args = core_attention_args(grid, HEADS, GROUPS, HEAD_DIM, params_dtype=torch.bfloat16, bf16=True)
    g = torch.Generator(device="cuda").manual_seed(0)
    qkv = [torch.randn(S, b, h, HEAD_DIM, generator=g, device="cuda", dtype=torch.bfloat16)
           for h in (HEADS, GROUPS, GROUPS)]
    weight = torch.randn(S, b, HEADS * HEAD_DIM, generator=g, device="cuda")
    want = _run(SDPACoreAttention(**args), mask.to("cuda").blocked(), qkv, weight)
    got = _run(core_cls(**args).cuda(), mask.to("cuda"), qkv, weight)
    for name, w, o in zip(("out", "dq", "dk", "dv"), want, got):
        torch.testing.assert_close(o, w, atol=3e-2, rtol=3e-2, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("order", ["xt_x0", "x0_xt"])
def test_compiled_flex_matches_sdpa(grid, order):
    _compare(grid, FlexCoreAttention, BlockDiffusionMask.halves(2, 256, 32, order), 512)


def test_compiled_flex_with_padding_segments(grid):
    spec = BlockDiffusionMask.halves(2, 256, 32)
    seg = spec.segment.clone()
    seg[1, 200:256] = -1
    seg[1, 456:] = -1
    _compare(grid, FlexCoreAttention, BlockDiffusionMask(seg, spec.block.contiguous()), 512)


@pytest.mark.skipif(not transformer_engine_available(), reason="needs Transformer Engine")
@pytest.mark.parametrize("case", ["right_padded", "no_padding", "block_diffusion"])
def test_mask_following_te_attention_matches_sdpa(grid, case):
    from tide_megatron.models.te_attention import MaskFollowingTEAttention

    b, S = 2, 384
    valid = torch.ones(b, S, dtype=torch.bool)
    if case == "right_padded":
        valid[1, 300:] = False
    mask = BlockDiffusionMask.halves(b, S // 2, 32) if case == "block_diffusion" else \
        KeyPaddingMask.from_attention_mask(valid.long(), b, S)
    if case == "right_padded":  # padded query rows are ignored downstream: compare the real rows only
        _compare_real_rows(grid, mask, valid, S, b)
    else:
        _compare(grid, MaskFollowingTEAttention, mask, S, b)


def _compare_real_rows(grid, mask, valid, S, b):
    from tide_megatron.models.te_attention import MaskFollowingTEAttention

    args = core_attention_args(grid, HEADS, GROUPS, HEAD_DIM, params_dtype=torch.bfloat16, bf16=True)
    g = torch.Generator(device="cuda").manual_seed(1)
    qkv = [torch.randn(S, b, h, HEAD_DIM, generator=g, device="cuda", dtype=torch.bfloat16)
           for h in (HEADS, GROUPS, GROUPS)]
    rows = valid.T.cuda()[..., None].float()  # [S, b, 1]: the loss reads real rows only
    weight = torch.randn(S, b, HEADS * HEAD_DIM, generator=g, device="cuda") * rows
    want = _run(SDPACoreAttention(**args), mask.to("cuda").blocked(), qkv, weight)
    got = _run(MaskFollowingTEAttention(**args), mask.to("cuda"), qkv, weight)
    torch.testing.assert_close(got[0] * rows, want[0] * rows, atol=3e-2, rtol=3e-2)
    for w, o in zip(want[1:], got[1:]):
        torch.testing.assert_close(o, w, atol=3e-2, rtol=3e-2)

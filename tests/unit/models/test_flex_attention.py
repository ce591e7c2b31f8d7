"""FlexAttention core attention vs SDPA with the explicit mask (DESIGN §3): values and q/k/v gradients, both
orders, padding, skipped blocks (compacted inputs), several xt passes, GQA, TP=1; and a whole student
forward + backward with each core attention on the same weights."""

import pytest
import torch
from megatron.core.models.gpt.gpt_model import GPTModel  # noqa: F401  (megatron import order)
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.transformer_config import TransformerConfig

from tide_megatron.diffusion import bd3lm_inputs, block_diffusion_mask
from tide_megatron.distributed import ParallelLayout, build_model_grid
from tide_megatron.models.attention import SDPACoreAttention
from tide_megatron.models.attention_mask import BlockDiffusionMask, KeyPaddingMask
from tide_megatron.models.backend import LocalFlexSpecProvider, LocalSDPASpecProvider
from tide_megatron.models.flex_attention import FlexCoreAttention, block_mask_for
from tide_megatron.models.gpt import ExplicitMaskGPTModel
from tide_megatron.models.qwen3 import qwen3_args_from_hf
from tide_megatron.models.qwen3.tiny import tiny_qwen3_config
from tide_megatron.models.spec import dense_layer_spec
from tide_megatron.models.norms import TorchNorm
from tide_megatron.teacher.passes import compact_teacher_inputs
from tide_megatron.training.compact import compact_student_inputs
from tests.helpers.core_attention import core_attention_args, forward_backward
from megatron.core.transformer.transformer_block import TransformerBlockSubmodules

HEADS, GROUPS, HEAD_DIM = 4, 2, 16


@pytest.fixture(scope="module")
def grid():
    with build_model_grid(ParallelLayout(), "flex-test") as g:
        yield g


def _cores(grid):
    args = core_attention_args(grid, HEADS, GROUPS, HEAD_DIM, use_cpu_initialization=True)
    return SDPACoreAttention(**args), FlexCoreAttention(**args)


def _qkv(b, S, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(S, b, HEADS, HEAD_DIM, generator=g, dtype=torch.float64).float()
    k = torch.randn(S, b, GROUPS, HEAD_DIM, generator=g, dtype=torch.float64).float()
    v = torch.randn(S, b, GROUPS, HEAD_DIM, generator=g, dtype=torch.float64).float()
    return [t.requires_grad_() for t in (q, k, v)]


def assert_parity(grid, flex_mask, dense_allowed, b, S, seed=0):
    """Flex on the description == SDPA on the explicit (independently built) dense mask, values and grads."""
    sdpa, flex = _cores(grid)
    qkv = _qkv(b, S, seed)
    weight = torch.randn(S, b, HEADS * HEAD_DIM, generator=torch.Generator().manual_seed(seed + 1))
    blocked = ~dense_allowed.reshape(-1, 1, S, S)
    want = forward_backward(sdpa, blocked, qkv, weight)
    got = forward_backward(flex, flex_mask, qkv, weight)
    for name, w, g in zip(("out", "dq", "dk", "dv"), want, got):
        torch.testing.assert_close(g, w, atol=2e-5, rtol=2e-5, msg=lambda m: f"{name}: {m}")
    assert want[0].abs().max() > 0.1 and want[2].abs().max() > 0.1  # not a trivially zero comparison


@pytest.mark.parametrize("order", ["xt_x0", "x0_xt"])
def test_both_orders_match_the_dense_block_diffusion_mask(grid, order):
    b, L, B = 2, 64, 16
    spec = BlockDiffusionMask.halves(b, L, B, order)
    dense = block_diffusion_mask(L, B, order)  # diffusion/masks.py, checked against spec §11.4 elsewhere
    assert torch.equal(spec.dense_allowed()[0, 0], dense)
    assert_parity(grid, spec, dense[None].expand(b, L * 2, L * 2), b, 2 * L)


def _two_half_reference(seg, pos, L, B, key_valid):
    """The dense mask of a compacted [x0 ; xt_1 ; xt_2] input from the two-half rule: each column is placed in
    its own [x0 ; xt_p] layout and read off `block_diffusion_mask`; xt of one pass never sees another pass."""
    two = block_diffusion_mask(L, B, "x0_xt")
    full = torch.where(seg > 0, L + pos, pos)
    allowed = two[full[:, :, None], full[:, None, :]]
    q, k = seg[:, :, None], seg[:, None, :]
    allowed = allowed & (q >= 0) & (k >= 0) & ((k == 0) | (q == k)) & key_valid[:, None, :]
    return allowed | (torch.eye(seg.shape[1], dtype=torch.bool)[None] & (q < 0))


def test_x0_first_teacher_with_padding_and_several_passes(grid):
    """WeDLM's [x0 ; xt_1 ; xt_2] compacted input (only requested xt blocks), teacher batch padding as key_valid."""
    g = torch.Generator().manual_seed(3)
    P, b, L, B = 2, 2, 64, 16
    x0 = torch.randint(0, 100, (b, L), generator=g)
    xts = torch.where(torch.rand(P, b, L, generator=g) < 0.5, 101, x0[None])
    need = torch.rand(P, b, L // B, generator=g) < 0.6
    need[0, :, 2] = True
    c = compact_teacher_inputs(x0, xts, need, B, pad_id=0)
    real = torch.ones(b, L, dtype=torch.bool)
    real[1, 40:] = False  # the second sequence is shorter
    key_valid = (c.segment >= 0) & real.gather(1, c.position_ids)
    spec = BlockDiffusionMask(c.segment, c.block, key_valid)
    reference = _two_half_reference(c.segment, c.position_ids, L, B, key_valid)
    assert torch.equal(spec.dense_allowed()[:, 0], reference)
    assert (c.segment < 0).any() and not key_valid.all()  # padding and invalid keys are both exercised
    assert_parity(grid, spec, reference, b, c.ids.shape[1])


def test_compacted_student_inputs_skip_blocks(grid):
    """training/compact.py's [kept xt blocks ; x0 blocks before the last] layout, padded per sequence."""
    g = torch.Generator().manual_seed(5)
    b, L, B = 3, 128, 16
    x0 = torch.randint(0, 100, (b, L), generator=g)
    masked = torch.rand(b, L, generator=g) < 0.08
    masked[2] = False
    masked[2, 40] = True  # one sequence keeps a single block
    xt = torch.where(masked, 101, x0)
    c = compact_student_inputs(xt, x0, masked, B, pad_id=0)
    assert c.ids.shape[1] < 2 * L
    rows = c.mask.dense_allowed()[:, 0]
    # The description of that layout (module docstring): kept xt blocks first, then the x0 blocks strictly
    # before each sequence's last kept xt block; the rest is padding.
    S = c.ids.shape[1]
    last_block = c.xt_positions.amax(-1) // B
    col = torch.arange(S)[None]
    is_xt = (col < c.xt_rows) & (torch.nn.functional.pad(c.xt_positions, (0, S - c.xt_rows), value=-1) >= 0)
    is_x0 = (col >= c.xt_rows) & (col - c.xt_rows < last_block[:, None] * B)
    seg = torch.where(is_xt, 1, torch.where(is_x0, 0, -1))
    blk = torch.where(seg >= 0, c.position_ids // B, -1)
    spec = BlockDiffusionMask(seg, blk)
    assert torch.equal(spec.dense_allowed()[:, 0], rows)  # the same mask compact.py built
    assert_parity(grid, spec, rows, b, c.ids.shape[1])


def test_key_padding(grid):
    b, S = 3, 48
    valid = torch.ones(b, S, dtype=torch.bool)
    valid[0, 30:] = False
    valid[2, 5:] = False
    spec = KeyPaddingMask.from_attention_mask(valid.long(), b, S)
    assert spec.right_padded and spec.te_padding_mask().shape == (b, 1, 1, S)
    assert_parity(grid, spec, valid[:, None, :].expand(b, S, S), b, S)
    holes = valid.clone()
    holes[1, 7] = False
    assert not KeyPaddingMask(holes).right_padded  # TE's fused padding kernels would be wrong: flex runs it
    none = KeyPaddingMask.from_attention_mask(torch.ones(b, S, dtype=torch.long), b, S)
    assert none.key_valid is None and none.te_padding_mask() is None  # TE: no_mask
    assert_parity(grid, none, torch.ones(b, S, S, dtype=torch.bool), b, S)


def test_explicit_dense_mask_runs_through_flex_too(grid):
    b, L, B = 2, 32, 8
    dense = block_diffusion_mask(L, B)
    blocked = (~dense)[None, None].expand(b, 1, 2 * L, 2 * L)
    assert block_mask_for(blocked, b, 2 * L, 2 * L, torch.device("cpu")) is \
        block_mask_for(blocked, b, 2 * L, 2 * L, torch.device("cpu"))  # built once, shared by every layer
    sdpa, flex = _cores(grid)
    qkv = _qkv(b, 2 * L, 9)
    weight = torch.randn(2 * L, b, HEADS * HEAD_DIM)
    for w, g in zip(forward_backward(sdpa, blocked, qkv, weight), forward_backward(flex, blocked, qkv, weight)):
        torch.testing.assert_close(g, w, atol=2e-5, rtol=2e-5)


def test_bad_masks_are_clear_errors(grid):
    _, flex = _cores(grid)
    q, k, v = _qkv(2, 32)
    with pytest.raises(ValueError, match=r"describes \[b=2, S=64\] but the input is \[b=2, S=32\]"):
        flex(q, k, v, BlockDiffusionMask.halves(2, 32, 8))
    with pytest.raises(ValueError, match="must be bool"):
        flex(q, k, v, torch.zeros(2, 1, 32, 32))
    with pytest.raises(ValueError, match="no attention dropout"):
        FlexCoreAttention(TransformerConfig(num_layers=1, hidden_size=64, num_attention_heads=4, attention_dropout=0.1,
                                            use_cpu_initialization=True), 1, AttnMaskType.arbitrary, "self",
                          pg_collection=grid.pgs)


# ------------------------------------------------------------------------------------------------------
# A whole student: forward + backward with each core attention, same weights
# ------------------------------------------------------------------------------------------------------

def _student(grid, provider, args):
    layer = dense_layer_spec(provider, qk_layernorm=True)
    spec = TransformerBlockSubmodules(layer_specs=[layer] * args.config.num_layers, layer_norm=TorchNorm)
    return ExplicitMaskGPTModel(config=args.config, transformer_layer_spec=spec, vocab_size=args.vocab_size,
                                max_sequence_length=args.max_position_embeddings, pre_process=True, post_process=True,
                                parallel_output=True, share_embeddings_and_output_weights=True,
                                rotary_base=args.rotary_base, pg_collection=grid.pgs)


def test_student_forward_backward_flex_equals_sdpa(grid):
    torch.manual_seed(0)
    args = qwen3_args_from_hf(tiny_qwen3_config().to_dict(), params_dtype=torch.float32)
    sdpa_model = _student(grid, LocalSDPASpecProvider(), args)
    flex_model = _student(grid, LocalFlexSpecProvider(), args)
    flex_model.load_state_dict(sdpa_model.state_dict())
    assert type(flex_model.decoder.layers[0].self_attention.core_attention) is FlexCoreAttention

    b, L, B = 2, 32, 8
    g = torch.Generator().manual_seed(1)
    x0 = torch.randint(0, 120, (b, L), generator=g)
    xt = torch.where(torch.rand(b, L, generator=g) < 0.5, 127, x0)
    ids, pos = bd3lm_inputs(xt, x0, order="xt_x0")
    spec = BlockDiffusionMask.halves(b, L, B, "xt_x0")
    results = []
    for model, mask in ((sdpa_model, block_diffusion_mask(L, B)), (flex_model, spec)):
        logits = model(ids, pos, mask, logits_rows=slice(0, L))
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), x0.reshape(-1))
        loss.backward()
        results.append((logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (want, want_grads), (got, got_grads) = results
    torch.testing.assert_close(got, want, atol=2e-5, rtol=2e-5)
    assert want_grads.keys() == got_grads.keys()
    for name in want_grads:
        torch.testing.assert_close(got_grads[name], want_grads[name], atol=5e-5, rtol=5e-5, msg=lambda m: f"{name}: {m}")
    # The SDPA path takes the description as well, with the same result as its dense mask.
    with torch.no_grad():
        torch.testing.assert_close(sdpa_model(ids, pos, spec, logits_rows=slice(0, L)), want, atol=1e-6, rtol=1e-6)

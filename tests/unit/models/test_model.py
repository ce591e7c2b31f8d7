"""The student model's contracts: explicit positions (§1.4 pitfall 5), explicit mask, row-sliced logits."""

import pytest
import torch

from tide_megatron.diffusion import bd3lm_inputs, block_diffusion_mask
from tide_megatron.distributed import ParallelLayout, build_model_grid
from tide_megatron.models.backend import LocalSDPASpecProvider, backend_name, get_backend
from tide_megatron.models.qwen3 import build_qwen3_model, qwen3_args_from_hf
from tide_megatron.models.qwen3.tiny import tiny_qwen3_config


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    args = qwen3_args_from_hf(tiny_qwen3_config().to_dict())
    return build_qwen3_model(args, build_model_grid(ParallelLayout(), "test").pgs).eval()


def _batch(L=8, B=4):
    g = torch.Generator().manual_seed(0)
    x0 = torch.randint(0, 128, (2, L), generator=g)
    xt = torch.where(torch.rand(2, L, generator=g) < 0.5, torch.full_like(x0, 127), x0)
    ids, pos = bd3lm_inputs(xt, x0)
    return ids, pos, block_diffusion_mask(L, B)


def test_cpu_backend_is_local_sdpa():
    assert backend_name() == "local" and isinstance(get_backend(), LocalSDPASpecProvider)
    with pytest.raises(ValueError, match="transformer_engine"):
        backend_name("te")


def test_logits_rows_equal_the_slice_of_full_logits(model):
    ids, pos, mask = _batch()
    with torch.no_grad():
        full = model(ids, pos, mask)
        xt_only = model(ids, pos, mask, logits_rows=slice(0, 8))
    assert full.shape == (2, 16, 128) and xt_only.shape == (2, 8, 128)
    torch.testing.assert_close(xt_only, full[:, :8], rtol=0, atol=0)


def test_rope_follows_the_given_position_ids(model):
    ids, pos, mask = _batch()
    contiguous = torch.arange(16).expand(2, 16)
    with torch.no_grad():
        dup = model(ids, pos, mask)
        cont = model(ids, contiguous, mask)
        shifted = model(ids, pos + 5, mask)
    assert (dup - cont).abs().max() > 1e-3  # megatron's default positions would be wrong here
    torch.testing.assert_close(dup, shifted, atol=1e-4, rtol=1e-4)  # RoPE is relative: a shift changes nothing


def test_attention_uses_only_the_explicit_mask(model):
    ids, pos, mask = _batch()
    with torch.no_grad():
        base = model(ids, pos, mask)
        # Changing an x0 token of the last block must not affect any xt row (xt sees only earlier x0 blocks)
        # nor earlier x0 rows (block-causal), but it does affect x0 rows of its own block.
        changed = ids.clone()
        changed[:, 15] = (changed[:, 15] + 1) % 128
        out = model(changed, pos, mask)
        none = model(ids, pos, None)  # no mask = every token visible
    diff = (out - base).abs().amax(dim=(0, 2))
    assert diff[:12].max() == 0 and diff[12:].min() > 0
    assert (none - base).abs().max() > 1e-3


def test_fully_masked_rows_stay_finite(model):
    ids, pos, mask = _batch()
    mask = mask.clone()
    mask[3] = False
    with torch.no_grad():
        assert torch.isfinite(model(ids, pos, mask)).all()


def test_the_last_layer_computes_only_the_rows_read_with_the_full_values_and_gradients():
    """logits_rows = [0, n): the last layer's attention output and MLP run on n rows (keys and values from all),
    and the outputs and every parameter gradient equal those of the full forward sliced afterwards."""
    torch.manual_seed(0)
    args = qwen3_args_from_hf(tiny_qwen3_config().to_dict())
    model = build_qwen3_model(args, build_model_grid(ParallelLayout(), "test-rows").pgs)
    ids, pos, mask = _batch()
    rows_seen = []
    hook = model.decoder.layers[-1].mlp.register_forward_pre_hook(lambda m, a: rows_seen.append(a[0].shape[0]))
    grads = []
    for rows in (None, slice(0, 8)):
        model.zero_grad()
        out = model(ids, pos, mask, logits_rows=rows, output="hidden")
        out = out if rows is not None else out[:, :8]
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        grads.append((out.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    hook.remove()
    assert rows_seen == [16, 8]
    (full, g_full), (cut, g_cut) = grads
    torch.testing.assert_close(cut, full, rtol=1e-5, atol=1e-6)
    for name in g_full:
        torch.testing.assert_close(g_cut[name], g_full[name], rtol=1e-4, atol=1e-6, msg=name)
    assert model.decoder.layers[-1].output_rows is None  # only for that one forward

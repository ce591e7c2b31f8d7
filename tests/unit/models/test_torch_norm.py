"""TorchNorm's RMSNorm (a hand-written backward) against the composite formula in float64 (values, both
gradients) and against torch's own RMSNorm; bf16 inputs normalised in fp32 and scaled in bf16, as HF Qwen3."""

import pytest
import torch
from megatron.core.transformer.transformer_config import TransformerConfig

from tide_megatron.models.norms import TorchNorm


def _norm(hidden: int, dtype=torch.float32) -> TorchNorm:
    config = TransformerConfig(num_layers=1, hidden_size=hidden, num_attention_heads=1, normalization="RMSNorm",
                               params_dtype=dtype)
    norm = TorchNorm(config, hidden, eps=1e-6)
    with torch.no_grad():
        norm.weight.copy_(1 + 0.3 * torch.randn(hidden, generator=torch.Generator().manual_seed(1)))
    return norm


def _composite64(x, weight, eps):
    h = x.double()
    return weight.double() * (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps))


@pytest.mark.parametrize("shape", [(7, 3, 32), (5, 2, 4, 16)])  # [s, b, h] and a per-head q/k norm [s, b, n, d]
def test_values_and_gradients_equal_the_float64_composite(shape):
    norm = _norm(shape[-1])
    g = torch.Generator().manual_seed(0)
    x = (3 * torch.randn(*shape, generator=g)).requires_grad_()
    upstream = torch.randn(*shape, generator=g)
    y = norm(x)
    y.backward(upstream)
    x64 = x.detach().double().requires_grad_()
    w64 = norm.weight.detach().double().requires_grad_()
    y64 = _composite64(x64, w64, 1e-6)
    y64.backward(upstream.double())
    torch.testing.assert_close(y.double(), y64, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(x.grad.double(), x64.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(norm.weight.grad.double(), w64.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(y, torch.nn.functional.rms_norm(x.detach(), (shape[-1],), norm.weight.detach(), 1e-6),
                               rtol=1e-6, atol=1e-6)


def test_bf16_is_normalised_in_fp32_and_scaled_in_bf16():
    norm = _norm(64, torch.bfloat16)
    x = (4 * torch.randn(9, 2, 64, generator=torch.Generator().manual_seed(2))).bfloat16().requires_grad_()
    y = norm(x)
    h = x.detach().float()
    want = norm.weight.detach() * (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6)).bfloat16()
    assert y.dtype == torch.bfloat16 and torch.equal(y, want)
    y.float().sum().backward()
    assert x.grad.dtype == norm.weight.grad.dtype == torch.bfloat16
    x64 = x.detach().double().requires_grad_()
    _composite64(x64, norm.weight.detach(), 1e-6).sum().backward()
    torch.testing.assert_close(x.grad.double(), x64.grad, rtol=2e-2, atol=2e-2)

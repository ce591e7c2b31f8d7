"""Torch RMSNorm / LayerNorm usable with sequence parallelism (megatron's WrappedTorchNorm refuses SP)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from megatron.core.transformer.transformer_config import TransformerConfig


class _RMSNorm(torch.autograd.Function):
    """``weight * (x * rsqrt(mean(x^2) + eps))``, normalised in fp32 and scaled in the input dtype (as HF Qwen3 does),
    with a hand-written backward: about half the elementwise passes autograd makes through the composite."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        h = x.float()
        r = torch.rsqrt(h.square().mean(-1, keepdim=True).add_(eps))
        xhat32 = h * r
        xhat = xhat32.to(x.dtype)
        ctx.save_for_backward(xhat32, r, weight)
        ctx.x_dtype = x.dtype
        return weight * xhat

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        xhat32, r, weight = ctx.saved_tensors
        xhat = xhat32.to(ctx.x_dtype)
        grad_weight = (grad * xhat).reshape(-1, weight.shape[0]).sum(0).to(weight.dtype)
        g = (grad * weight).float()  # d loss / d xhat, in fp32 for the normalisation's backward
        dot = (g * xhat32).mean(-1, keepdim=True)
        grad_x = g.sub_(xhat32 * dot).mul_(r)  # r * (g - xhat * mean(g * xhat))
        return grad_x.to(ctx.x_dtype), grad_weight, None


class TorchNorm(torch.nn.Module):
    """RMSNorm or LayerNorm (per `config.normalization`) whose params carry `sequence_parallel`.

    The attribute makes `finalize_model_grads` all-reduce their grads over TP when SP is on.
    State-dict keys are `weight` (and `bias` for LayerNorm), as in the torch/TE norms.
    """

    def __init__(self, config: TransformerConfig, hidden_size: int, eps: float = 1e-5, **_unused):
        super().__init__()
        if config.normalization not in ("RMSNorm", "LayerNorm"):
            raise ValueError(f"TorchNorm: config.normalization must be RMSNorm or LayerNorm, "
                             f"got {config.normalization!r}")
        self.rms = config.normalization == "RMSNorm"
        self.eps = eps
        self.hidden_size = hidden_size
        self.weight = torch.nn.Parameter(torch.ones(hidden_size, dtype=config.params_dtype))
        self.bias = None if self.rms else torch.nn.Parameter(torch.zeros(hidden_size, dtype=config.params_dtype))
        for p in self.parameters():
            setattr(p, "sequence_parallel", config.sequence_parallel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in fp32 (as HF Qwen3 does), scale in the input dtype.
        if self.rms:
            return _RMSNorm.apply(x, self.weight, self.eps)
        return F.layer_norm(x.float(), (self.hidden_size,), self.weight.float(), self.bias.float(),
                            self.eps).to(x.dtype)

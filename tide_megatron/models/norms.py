"""Torch RMSNorm / LayerNorm usable with sequence parallelism (megatron's WrappedTorchNorm refuses SP)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from megatron.core.transformer.transformer_config import TransformerConfig


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
        h = x.float()
        if self.rms:
            h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
            return self.weight * h.to(x.dtype)
        return F.layer_norm(h, (self.hidden_size,), self.weight.float(), self.bias.float(), self.eps).to(x.dtype)

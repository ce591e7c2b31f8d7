"""Interim spec provider for the LLaDA2 teacher until the shared `models/backend.py` lands.

GPU with Transformer Engine: megatron-core's TESpecProvider. Otherwise megatron-core's LocalSpecProvider
(local linears, DotProductAttention with an explicit mask) with an RMSNorm that also works under
sequence parallelism (megatron's WrappedTorchNorm refuses it, and MoE with TP > 1 requires it).
"""

from __future__ import annotations

import torch
from megatron.core.models.backends import BackendSpecProvider, LocalSpecProvider


class SequenceParallelRMSNorm(torch.nn.Module):
    """torch RMSNorm (fp32 math) whose weight is marked for megatron's sequence-parallel grad reduction."""

    def __init__(self, config, hidden_size: int, eps: float = 1e-6, **kwargs):
        super().__init__()
        self.eps = eps
        self.weight = torch.nn.Parameter(torch.ones(hidden_size, dtype=config.params_dtype))
        setattr(self.weight, "sequence_parallel", bool(config.sequence_parallel))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight.float()).to(x.dtype)


class CpuSpecProvider(LocalSpecProvider):
    """LocalSpecProvider with a sequence-parallel-safe RMSNorm."""

    def layer_norm(self, rms_norm: bool = False, for_qk: bool = False) -> type:
        if not rms_norm:
            return super().layer_norm(rms_norm, for_qk)
        return SequenceParallelRMSNorm


def default_backend() -> BackendSpecProvider:
    """TE on a CUDA machine that has it, the CPU provider otherwise."""
    if torch.cuda.is_available():
        try:
            from megatron.core.extensions.transformer_engine_spec_provider import TESpecProvider

            return TESpecProvider()
        except ImportError:
            pass
    return CpuSpecProvider()

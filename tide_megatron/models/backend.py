"""The one place that picks megatron-core layer classes: Transformer Engine on GPU, local + SDPA on CPU.

TE fuses the pre-attention and a dense FFN's pre-MLP norm into the next linear (`layer_norm_weight`);
the layer specs (`models.spec`) place norms per provider and save unfused ones under the fused names, so
one dist checkpoint loads on either backend; "local_fused" is the local provider with TE's norm fusion.
Attention always takes an explicit mask (`AttnMaskType.arbitrary`).
"""

from __future__ import annotations

import functools
import os
from typing import Optional

import torch
from megatron.core.models.backends import BackendSpecProvider, LocalSpecProvider

from tide_megatron.models.attention import SDPACoreAttention
from tide_megatron.models.layernorm_linear import FusedNormSpecProvider
from tide_megatron.models.norms import TorchNorm

BACKEND_ENV = "TIDE_BACKEND"  # "te" | "local" | "local_fused" (local parts, norms fused as TE fuses them) | unset (auto)
BACKENDS = ("te", "local", "local_fused")


@functools.lru_cache(maxsize=None)
def transformer_engine_available() -> bool:
    """True when `transformer_engine.pytorch` imports and CUDA is usable."""
    if not torch.cuda.is_available():
        return False
    try:
        import transformer_engine.pytorch  # noqa: F401
    except Exception:  # the TE meta package raises RuntimeError, not ImportError
        return False
    return True


class LocalSDPASpecProvider(LocalSpecProvider):
    """megatron-core local linears, torch norms (SP-capable) and SDPA core attention: runs on CPU and GPU."""

    def layer_norm(self, rms_norm: bool = False, for_qk: bool = False) -> type:
        return TorchNorm

    def core_attention(self) -> type:
        return SDPACoreAttention


def backend_name(requested: Optional[str] = None) -> str:
    """Resolve 'te' / 'local' from the argument, the TIDE_BACKEND variable, or what is installed."""
    name = requested or os.environ.get(BACKEND_ENV) or ("te" if transformer_engine_available() else "local")
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS} (flag --backend / {BACKEND_ENV}), got {name!r}")
    if name == "te" and not transformer_engine_available():
        raise ValueError("backend 'te' requested but transformer_engine.pytorch with CUDA is not available")
    return name


def get_backend(requested: Optional[str] = None) -> BackendSpecProvider:
    """The `BackendSpecProvider` for `backend_name(requested)`."""
    if backend_name(requested) == "te":
        from megatron.core.extensions.transformer_engine_spec_provider import TESpecProvider

        return TESpecProvider()
    if backend_name(requested) == "local_fused":
        return FusedNormSpecProvider(LocalSDPASpecProvider())
    return LocalSDPASpecProvider()

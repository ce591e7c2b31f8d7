"""The one place that picks megatron-core layer classes: Transformer Engine on GPU, local + SDPA on CPU.

TE fuses the pre-attention and a dense FFN's pre-MLP norm into the next linear (`layer_norm_weight`);
the layer specs (`models.spec`) place norms per provider and save unfused ones under the fused names, so
one dist checkpoint loads on either backend; "local_fused" is the local provider with TE's norm fusion.
Core attention follows the mask (DESIGN §3): on the TE backend, key padding runs TE's fused padding
attention and block-diffusion masks run FlexAttention; the local backends run SDPA with the explicit mask
(CPU; `LocalFlexSpecProvider` swaps in FlexAttention). Whether TE is usable is answered by
`models.transformer_engine`.
"""

from __future__ import annotations

import os
from typing import Optional

from megatron.core.models.backends import BackendSpecProvider, LocalSpecProvider

from tide_megatron.models.attention import SDPACoreAttention
from tide_megatron.models.flex_attention import FlexCoreAttention
from tide_megatron.models.layernorm_linear import FusedNormSpecProvider
from tide_megatron.models.norms import TorchNorm
from tide_megatron.models.transformer_engine import transformer_engine_available, transformer_engine_status

BACKEND_ENV = "TIDE_BACKEND"  # "te" | "local" | "local_fused" (local parts, norms fused as TE fuses them) | unset (auto)
BACKENDS = ("te", "local", "local_fused")


class LocalSDPASpecProvider(LocalSpecProvider):
    """megatron-core local linears, torch norms (SP-capable) and SDPA core attention: runs on CPU and GPU."""

    def layer_norm(self, rms_norm: bool = False, for_qk: bool = False) -> type:
        return TorchNorm

    def core_attention(self) -> type:
        return SDPACoreAttention


class LocalFlexSpecProvider(LocalSDPASpecProvider):
    """The local provider with FlexAttention core attention (block-sparse from the mask's structure)."""

    def core_attention(self) -> type:
        return FlexCoreAttention


def backend_name(requested: Optional[str] = None) -> str:
    """Resolve 'te' / 'local' from the argument, the TIDE_BACKEND variable, or what is installed."""
    name = requested or os.environ.get(BACKEND_ENV) or ("te" if transformer_engine_available() else "local")
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS} (flag --backend / {BACKEND_ENV}), got {name!r}")
    if name == "te" and not transformer_engine_available():
        raise ValueError(f"backend 'te' requested but Transformer Engine is not usable here: "
                         f"{transformer_engine_status().reason}")
    return name


def get_backend(requested: Optional[str] = None) -> BackendSpecProvider:
    """The `BackendSpecProvider` for `backend_name(requested)`."""
    if backend_name(requested) == "te":
        return _te_spec_provider()
    if backend_name(requested) == "local_fused":
        return FusedNormSpecProvider(LocalSDPASpecProvider())
    return LocalSDPASpecProvider()


def _te_spec_provider() -> BackendSpecProvider:
    from tide_megatron.models.te_attention import MaskFollowingTESpecProvider  # imports TE: GPU installs only

    return MaskFollowingTESpecProvider()

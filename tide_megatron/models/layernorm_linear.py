"""A norm fused into the following column-parallel linear, built from local parts, as Transformer Engine fuses it.

TE's layer spec puts the pre-attention norm inside `linear_qkv` and a dense FFN's pre-MLP norm inside
`linear_fc1` (`TELayerNormColumnParallelLinear`, norm weight `layer_norm_weight`). `LayerNormColumnParallelLinear`
is the same module on CPU-capable parts (our `TorchNorm`, then megatron's `ColumnParallelLinear`), with the
same parameter names, and `FusedNormSpecProvider` hands it out the way `TESpecProvider` hands out TE's: it lets
the CPU suite build, convert and run the exact layer structure the GPU runs (backend name ``local_fused``).
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from megatron.core.tensor_parallel.layers import ColumnParallelLinear
from megatron.core.transformer.transformer_config import TransformerConfig

from tide_megatron.models.norms import TorchNorm


class LayerNormColumnParallelLinear(ColumnParallelLinear):
    """RMSNorm / LayerNorm (per `config.normalization`) on the input, then `ColumnParallelLinear`.

    Parameters: `layer_norm_weight` (and `layer_norm_bias` for LayerNorm), `weight`, `bias`, as in TE's
    `LayerNormLinear`. Under sequence parallelism the norm runs on the local sequence shard before the
    linear's all-gather, as TE's does; its parameters carry `sequence_parallel` so their grads are reduced.
    """

    def __init__(self, input_size: int, output_size: int, *, config: TransformerConfig, **kwargs: Any):
        if getattr(config, "layernorm_zero_centered_gamma", False):
            raise ValueError("LayerNormColumnParallelLinear: layernorm_zero_centered_gamma=True is not supported "
                             "(expected a plain weight, as in the Qwen3 and LLaDA2 checkpoints)")
        super().__init__(input_size, output_size, config=config, **kwargs)
        norm = TorchNorm(config, input_size, eps=config.layernorm_epsilon)
        self.layer_norm_weight = norm.weight
        if norm.bias is not None:
            self.layer_norm_bias = norm.bias
        # The norm's parameters are registered above under TE's names; the norm itself stays out of the
        # module tree so that they are not listed a second time as `norm.weight`.
        self.__dict__["_norm"] = norm

    def forward(self, input_: torch.Tensor, weight: Optional[torch.Tensor] = None,
                runtime_gather_output: Optional[bool] = None):
        return super().forward(self._norm(input_), weight=weight, runtime_gather_output=runtime_gather_output)


class FusedNormSpecProvider:
    """A backend spec provider that reports fused norms the way `TESpecProvider` does.

    `fuse_layernorm_and_linear()` is True and `column_parallel_layer_norm_linear()` is
    `LayerNormColumnParallelLinear`; every other choice (linears, norms, core attention, experts) is the
    wrapped provider's, whose column-parallel linear must be megatron's local `ColumnParallelLinear`.
    """

    def __init__(self, base: Any):
        if base.column_parallel_linear() is not ColumnParallelLinear:
            raise ValueError(f"FusedNormSpecProvider builds on megatron's local ColumnParallelLinear; "
                             f"{type(base).__name__} uses {base.column_parallel_linear().__name__}")
        self.base = base

    def fuse_layernorm_and_linear(self) -> bool:
        return True

    def column_parallel_layer_norm_linear(self) -> type:
        return LayerNormColumnParallelLinear

    def __getattr__(self, name: str) -> Any:
        return getattr(self.base, name)

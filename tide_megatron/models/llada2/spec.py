"""LLaDA2-MoE layer specs on megatron-core: dense SwiGLU for the first k layers, megatron's MoELayer
(SequentialMLP or grouped experts, plus a SharedExpertMLP) for the rest; bidirectional attention from
an explicit mask (§2.1). The shared backend provider (`models.backend`) picks TE modules on GPU and
local linears + SDPA core attention + torch RMSNorm on CPU; norms sit where `models.spec.dense_layer_spec`
puts them for that provider (a dense layer's pre-MLP norm fused into fc1 under TE, an MoE layer's never).
"""

from __future__ import annotations

from typing import Optional

from megatron.core.models.backends import BackendSpecProvider
from megatron.core.models.gpt.moe_module_specs import get_moe_module_spec_for_backend
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.transformer_block import TransformerBlockSubmodules, get_num_layers_to_build
from megatron.core.transformer.transformer_config import TransformerConfig
from megatron.core.transformer.transformer_layer import get_transformer_layer_offset

from tide_megatron.models.backend import get_backend
from tide_megatron.models.spec import dense_layer_spec


def layer_spec(backend: BackendSpecProvider, moe: bool, config: TransformerConfig) -> ModuleSpec:
    """One LLaDA2 decoder layer: the shared pre-norm GQA + QK-RMSNorm layer (bidirectional attention from
    the caller's key-padding mask, §2.1) with a dense SwiGLU or a megatron MoE FFN."""
    mlp = get_moe_module_spec_for_backend(backend, num_experts=config.num_moe_experts,
                                          moe_grouped_gemm=config.moe_grouped_gemm) if moe else None
    return dense_layer_spec(backend, config.qk_layernorm, moe_mlp=mlp)


def decoder_block_spec(config: TransformerConfig, backend: Optional[str] = None,
                       pp_rank: Optional[int] = None) -> TransformerBlockSubmodules:
    """Specs of the layers this pipeline stage builds (megatron's layer offset), plus the final norm."""
    provider = get_backend(backend)
    pattern = config.moe_layer_freq
    specs = [layer_spec(provider, bool(is_moe), config) for is_moe in pattern]
    offset = get_transformer_layer_offset(config, pp_rank=pp_rank)
    count = get_num_layers_to_build(config, pp_rank=pp_rank)
    return TransformerBlockSubmodules(layer_specs=specs[offset: offset + count],
                                      layer_norm=provider.layer_norm(rms_norm=True, for_qk=False))

"""LLaDA2-MoE layer specs on megatron-core: dense SwiGLU for the first k layers, megatron's MoELayer
(SequentialMLP or grouped experts, plus a SharedExpertMLP) for the rest; bidirectional attention from
an explicit mask (§2.1). The shared backend provider (`models.backend`) picks TE modules on GPU and
local linears + SDPA core attention + torch RMSNorm on CPU.
"""

from __future__ import annotations

from typing import Optional

from megatron.core.models.backends import BackendSpecProvider
from megatron.core.models.gpt.gpt_layer_specs import get_mlp_module_spec_for_backend
from megatron.core.transformer.attention import SelfAttention, SelfAttentionSubmodules
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.identity_op import IdentityOp
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.transformer_block import TransformerBlockSubmodules
from megatron.core.transformer.transformer_config import TransformerConfig
from megatron.core.transformer.transformer_layer import (
    TransformerLayer,
    TransformerLayerSubmodules,
    get_transformer_layer_offset,
)
from megatron.core.fusions.fused_bias_dropout import get_bias_dropout_add

from tide_megatron.models.backend import get_backend


def layer_spec(backend: BackendSpecProvider, moe: bool, config: TransformerConfig) -> ModuleSpec:
    """One LLaDA2 decoder layer: pre-norm GQA attention with QK RMSNorm, then a dense or MoE FFN.

    For the dense FFN a TE backend would gain from fusing the norm into linear_fc1; norms are kept
    unfused (as in `models.spec`) so checkpoints load on either backend.
    """
    norm = backend.layer_norm(rms_norm=True, for_qk=False)
    qk_norm = backend.layer_norm(rms_norm=True, for_qk=True) if config.qk_layernorm else IdentityOp
    mlp = get_mlp_module_spec_for_backend(backend, num_experts=config.num_moe_experts if moe else None,
                                          moe_grouped_gemm=config.moe_grouped_gemm)
    return ModuleSpec(
        module=TransformerLayer,
        submodules=TransformerLayerSubmodules(
            input_layernorm=norm,
            self_attention=ModuleSpec(
                module=SelfAttention,
                # LLaDA2 is a masked-diffusion model: no causal mask; the caller's mask (key padding, §2.1).
                params={"attn_mask_type": AttnMaskType.arbitrary},
                submodules=SelfAttentionSubmodules(
                    linear_qkv=backend.column_parallel_linear(),
                    core_attention=backend.core_attention(),
                    linear_proj=backend.row_parallel_linear(),
                    q_layernorm=qk_norm,
                    k_layernorm=qk_norm,
                ),
            ),
            self_attn_bda=get_bias_dropout_add,
            pre_mlp_layernorm=norm,  # norms stay unfused on every backend: one parameter naming
            mlp=mlp,
            mlp_bda=get_bias_dropout_add,
        ),
    )


def decoder_block_spec(config: TransformerConfig, backend: Optional[str] = None,
                       pp_rank: Optional[int] = None) -> TransformerBlockSubmodules:
    """Specs of the layers this pipeline stage builds (megatron's layer offset), plus the final norm."""
    from megatron.core.transformer.transformer_block import get_num_layers_to_build

    provider = get_backend(backend)
    pattern = config.moe_layer_freq
    specs = [layer_spec(provider, bool(is_moe), config) for is_moe in pattern]
    offset = get_transformer_layer_offset(config, pp_rank=pp_rank)
    count = get_num_layers_to_build(config, pp_rank=pp_rank)
    return TransformerBlockSubmodules(layer_specs=specs[offset: offset + count],
                                      layer_norm=provider.layer_norm(rms_norm=True, for_qk=False))

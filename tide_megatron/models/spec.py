"""Dense transformer-layer and block specs from a backend provider (shared by Qwen3-style models)."""

from __future__ import annotations

from typing import Optional

from megatron.core.fusions.fused_bias_dropout import get_bias_dropout_add
from megatron.core.models.backends import BackendSpecProvider
from megatron.core.transformer.attention import SelfAttention, SelfAttentionSubmodules
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.identity_op import IdentityOp
from megatron.core.transformer.mlp import MLP, MLPSubmodules
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.transformer_block import TransformerBlockSubmodules, get_num_layers_to_build
from megatron.core.transformer.transformer_config import TransformerConfig
from megatron.core.transformer.transformer_layer import TransformerLayer, TransformerLayerSubmodules

from tide_megatron.models.backend import get_backend


def dense_layer_spec(backend: BackendSpecProvider, qk_layernorm: bool,
                     mlp: Optional[ModuleSpec] = None) -> ModuleSpec:
    """Pre-norm layer: norm -> self-attention (explicit mask) -> norm -> FFN. Norms stay unfused.

    The FFN is a (Swi)GLU `MLP` unless ``mlp`` gives another spec (e.g. megatron's MoE layer).
    """
    norm = backend.layer_norm(rms_norm=True, for_qk=False)
    qk_norm = backend.layer_norm(rms_norm=True, for_qk=True) if qk_layernorm else IdentityOp
    return ModuleSpec(
        module=TransformerLayer,
        submodules=TransformerLayerSubmodules(
            input_layernorm=norm,
            self_attention=ModuleSpec(
                module=SelfAttention,
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
            pre_mlp_layernorm=norm,
            mlp=mlp or ModuleSpec(module=MLP, submodules=MLPSubmodules(
                linear_fc1=backend.column_parallel_linear(), linear_fc2=backend.row_parallel_linear())),
            mlp_bda=get_bias_dropout_add,
        ),
    )


def dense_block_spec(config: TransformerConfig, backend: Optional[str] = None,
                     pp_rank: int = 0) -> TransformerBlockSubmodules:
    """The layers of pipeline stage `pp_rank` plus the final norm, all from one backend provider."""
    provider = get_backend(backend)
    layer = dense_layer_spec(provider, config.qk_layernorm)
    n = get_num_layers_to_build(config, pp_rank=pp_rank)
    return TransformerBlockSubmodules(layer_specs=[layer] * n,
                                      layer_norm=provider.layer_norm(rms_norm=True, for_qk=False))

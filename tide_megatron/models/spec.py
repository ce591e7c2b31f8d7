"""Pre-norm transformer-layer and block specs from a backend provider (Qwen3 layers and LLaDA2's layers).

Where a norm goes follows the provider, as in megatron-core's own specs: a provider that fuses norms into
the next linear (`fuse_layernorm_and_linear()`, Transformer Engine) gets the input norm inside
`linear_qkv` and a dense FFN's pre-MLP norm inside `linear_fc1` (`...layer_norm_weight`, no separate norm
module), while an MoE FFN keeps a separate `pre_mlp_layernorm` on every backend (TE's MoE spec has no
fused norm). An unfused layer saves its norms under the fused names (megatron's local-spec key map), so
one dist checkpoint loads on either backend.
"""

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
from megatron.core.transformer.transformer_layer import TransformerLayerSubmodules

from tide_megatron.models.backend import get_backend
from tide_megatron.models.output_rows import OutputRowsTransformerLayer

#: unfused norm -> the name TE's fused module gives it (the sharded-state-dict key map of megatron's local spec)
FUSED_NORM_KEYS = {"input_layernorm.": "self_attention.linear_qkv.layer_norm_",
                   "pre_mlp_layernorm.": "mlp.linear_fc1.layer_norm_"}


def dense_layer_spec(backend: BackendSpecProvider, qk_layernorm: bool,
                     moe_mlp: Optional[ModuleSpec] = None) -> ModuleSpec:
    """Pre-norm layer: norm -> self-attention (explicit mask) -> norm -> FFN, norms placed as the backend fuses them.

    The FFN is a (Swi)GLU `MLP` unless `moe_mlp` gives megatron's MoE layer spec.
    """
    fused = backend.fuse_layernorm_and_linear()
    norm = backend.layer_norm(rms_norm=True, for_qk=False)
    qk_norm = backend.layer_norm(rms_norm=True, for_qk=True) if qk_layernorm else IdentityOp
    norm_linear = backend.column_parallel_layer_norm_linear() if fused else backend.column_parallel_linear()
    if moe_mlp is None:
        mlp = ModuleSpec(module=MLP, submodules=MLPSubmodules(linear_fc1=norm_linear,
                                                              linear_fc2=backend.row_parallel_linear()))
        pre_mlp_norm = IdentityOp if fused else norm
        keys = {} if fused else dict(FUSED_NORM_KEYS)
    else:
        mlp, pre_mlp_norm = moe_mlp, norm
        keys = {} if fused else {"input_layernorm.": FUSED_NORM_KEYS["input_layernorm."]}
    return ModuleSpec(
        module=OutputRowsTransformerLayer,  # megatron's layer; the last one can stop at the rows read (§9.21)
        submodules=TransformerLayerSubmodules(
            input_layernorm=IdentityOp if fused else norm,
            self_attention=ModuleSpec(
                module=SelfAttention,
                params={"attn_mask_type": AttnMaskType.arbitrary},
                submodules=SelfAttentionSubmodules(
                    linear_qkv=norm_linear,
                    core_attention=backend.core_attention(),
                    linear_proj=backend.row_parallel_linear(),
                    q_layernorm=qk_norm,
                    k_layernorm=qk_norm,
                ),
            ),
            self_attn_bda=get_bias_dropout_add,
            pre_mlp_layernorm=pre_mlp_norm,
            mlp=mlp,
            mlp_bda=get_bias_dropout_add,
            sharded_state_dict_keys_map=keys,
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

"""LLaDA2-MoE: the HF config.json read and checked, then mapped to a megatron-core TransformerConfig (§2.1).

Every router setting is mapped to megatron-core's own MoE router (sigmoid scores, expert bias used only
for selection, group-limited top-k, normalised top-k weights times the routed scaling factor, §9 pitfall
22). A setting megatron-core 0.16.1 cannot reproduce exactly raises `UnsupportedRouterSetting` instead of
silently routing differently.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import torch
import torch.nn.functional as F
from megatron.core.transformer.transformer_config import TransformerConfig

from tide_megatron.distributed.grids import ParallelLayout
from tide_megatron.models.moe_kernels import MoEKernels

LLADA2_MODEL_TYPES = ("llada2_moe",)
LLADA2_ARCHITECTURES = ("LLaDA2MoeModelLM",)


class LLaDA2ConfigError(ValueError):
    """config.json is not an LLaDA2-MoE config, or a field has a value we cannot run."""


class UnsupportedRouterSetting(LLaDA2ConfigError):
    """A router setting that megatron-core's MoE router cannot express exactly."""


@dataclass(frozen=True)
class LLaDA2Config:
    """The config.json fields the LLaDA2-MoE architecture depends on (HF names)."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    rotary_dim: int
    num_experts: int
    num_shared_experts: int
    num_experts_per_tok: int
    n_group: int
    topk_group: int
    routed_scaling_factor: float
    moe_intermediate_size: int
    first_k_dense_replace: int
    use_qk_norm: bool = True
    use_qkv_bias: bool = False
    tie_word_embeddings: bool = False
    max_position_embeddings: int = 16384
    pad_token_id: Optional[int] = None
    source: str = "config.json"

    @property
    def rotary_percent(self) -> float:
        return self.rotary_dim / self.head_dim

    @property
    def moe_layer_pattern(self) -> list[int]:
        """megatron's moe_layer_freq list: 0 = dense SwiGLU layer, 1 = MoE layer (first k dense)."""
        k = self.first_k_dense_replace
        return [0] * k + [1] * (self.num_hidden_layers - k)

    @classmethod
    def from_pretrained(cls, path: Union[str, Path]) -> "LLaDA2Config":
        """Read ``path`` (a directory holding config.json, or the file itself)."""
        path = Path(path)
        file = path / "config.json" if path.is_dir() else path
        if not file.is_file():
            raise LLaDA2ConfigError(f"{file}: no config.json found (expected a Hugging Face checkpoint directory)")
        return cls.from_dict(json.loads(file.read_text()), source=str(file))

    @classmethod
    def from_dict(cls, raw: dict, source: str = "config.json") -> "LLaDA2Config":
        """Validate the raw HF dict; one clear error per unsupported or inconsistent field."""
        model_type = raw.get("model_type")
        archs = raw.get("architectures") or []
        if model_type not in LLADA2_MODEL_TYPES and not set(archs) & set(LLADA2_ARCHITECTURES):
            raise LLaDA2ConfigError(
                f"{source}: model_type={model_type!r}, architectures={archs} is not an LLaDA2-MoE checkpoint "
                f"(expected model_type in {LLADA2_MODEL_TYPES} or architectures in {LLADA2_ARCHITECTURES})")

        def need(name: str):
            if raw.get(name) is None:
                raise LLaDA2ConfigError(f"{source}: field '{name}' is missing (required for LLaDA2-MoE)")
            return raw[name]

        hidden, heads = int(need("hidden_size")), int(need("num_attention_heads"))
        head_dim = int(raw.get("head_dim") or hidden // heads)
        rotary_dim = _rotary_dim(raw, head_dim, source)
        _check_router(raw, source)
        if raw.get("rope_scaling"):
            raise LLaDA2ConfigError(f"{source}: rope_scaling={raw['rope_scaling']!r} is not supported (expected null)")
        if raw.get("use_bias"):
            raise LLaDA2ConfigError(f"{source}: use_bias=true (a bias on the attention output only) is not "
                                    "supported; expected false as in the released LLaDA2 checkpoints")
        if raw.get("hidden_act", "silu") != "silu":
            raise LLaDA2ConfigError(f"{source}: hidden_act={raw['hidden_act']!r}; expected 'silu' (SwiGLU)")
        num_layers = int(need("num_hidden_layers"))
        first_k = int(raw.get("first_k_dense_replace") or 0)
        if not 0 <= first_k <= num_layers:
            raise LLaDA2ConfigError(f"{source}: first_k_dense_replace={first_k} must lie in [0, {num_layers}]")
        return cls(
            vocab_size=int(need("vocab_size")), hidden_size=hidden,
            intermediate_size=int(raw.get("intermediate_size") or 0), num_hidden_layers=num_layers,
            num_attention_heads=heads, num_key_value_heads=int(raw.get("num_key_value_heads") or heads),
            head_dim=head_dim, rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
            rope_theta=float(need("rope_theta")), rotary_dim=rotary_dim, num_experts=int(need("num_experts")),
            num_shared_experts=int(raw.get("num_shared_experts") or 0),
            num_experts_per_tok=int(need("num_experts_per_tok")), n_group=int(raw.get("n_group") or 1),
            topk_group=int(raw.get("topk_group") or 1), routed_scaling_factor=float(raw.get("routed_scaling_factor", 1.0)),
            moe_intermediate_size=int(need("moe_intermediate_size")), first_k_dense_replace=first_k,
            use_qk_norm=bool(raw.get("use_qk_norm", True)), use_qkv_bias=bool(raw.get("use_qkv_bias", False)),
            tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
            max_position_embeddings=int(raw.get("max_position_embeddings", 16384)),
            pad_token_id=raw.get("pad_token_id"), source=source,
        )

    def check_layout(self, layout: ParallelLayout) -> None:
        """Errors for a parallel layout this checkpoint cannot be split over."""
        src = self.source
        if self.num_experts % layout.ep:
            raise LLaDA2ConfigError(f"{src}: expert-parallel size ep={layout.ep} does not divide "
                                    f"num_experts={self.num_experts}")
        if self.vocab_size % layout.tp:
            raise LLaDA2ConfigError(f"{src}: tensor-parallel size tp={layout.tp} does not divide "
                                    f"vocab_size={self.vocab_size}")
        if self.num_attention_heads % layout.tp or self.num_key_value_heads % layout.tp:
            raise LLaDA2ConfigError(f"{src}: tp={layout.tp} must divide num_attention_heads="
                                    f"{self.num_attention_heads} and num_key_value_heads={self.num_key_value_heads}")
        ffn = [("intermediate_size", self.intermediate_size, layout.tp, "tp")] if self.first_k_dense_replace else []
        ffn.append(("moe_intermediate_size", self.moe_intermediate_size, layout.etp, "etp"))
        if self.num_shared_experts:
            ffn.append(("num_shared_experts x moe_intermediate_size", self.num_shared_experts *
                        self.moe_intermediate_size, layout.tp, "tp"))
        for name, size, parts, flag in ffn:
            if size % parts:
                raise LLaDA2ConfigError(f"{src}: {flag}={parts} does not divide {name}={size} (the FFN is split "
                                        f"over {flag})")
        if self.num_hidden_layers % layout.pp:
            raise LLaDA2ConfigError(f"{src}: pipeline size pp={layout.pp} does not divide "
                                    f"num_hidden_layers={self.num_hidden_layers}")

    def to_transformer_config(self, layout: ParallelLayout = ParallelLayout(), params_dtype: torch.dtype = torch.bfloat16,
                              use_cpu_initialization: Optional[bool] = None, moe_kernels: Optional[MoEKernels] = None):
        """The megatron-core TransformerConfig (MoE fields included) for ``layout``; ``moe_kernels`` from
        `models.moe_kernels.resolve_moe_kernels` (default: no grouped GEMM, no fused permutation, alltoall)."""
        self.check_layout(layout)
        if use_cpu_initialization is None:
            use_cpu_initialization = not torch.cuda.is_available()
        return TransformerConfig(
            num_layers=self.num_hidden_layers, hidden_size=self.hidden_size,
            num_attention_heads=self.num_attention_heads, num_query_groups=self.num_key_value_heads,
            kv_channels=self.head_dim, ffn_hidden_size=self.intermediate_size or self.moe_intermediate_size,
            normalization="RMSNorm", layernorm_epsilon=self.rms_norm_eps, gated_linear_unit=True,
            activation_func=F.silu, add_bias_linear=False, add_qkv_bias=self.use_qkv_bias,
            qk_layernorm=self.use_qk_norm, hidden_dropout=0.0, attention_dropout=0.0,
            attention_softmax_in_fp32=True, masked_softmax_fusion=False, bias_activation_fusion=False,
            bias_dropout_fusion=False, apply_rope_fusion=False, gradient_accumulation_fusion=False,
            persist_layer_norm=False,
            # MoE: megatron-core's router reproduces LLaDA2's gate exactly (moe_utils.topk_routing_with_score_function).
            num_moe_experts=self.num_experts, moe_ffn_hidden_size=self.moe_intermediate_size,
            moe_router_topk=self.num_experts_per_tok, moe_router_score_function="sigmoid",
            moe_router_enable_expert_bias=True, moe_router_bias_update_rate=0.0,
            moe_router_num_groups=self.n_group if self.n_group > 1 else None,
            moe_router_group_topk=self.topk_group if self.n_group > 1 else None,
            moe_router_topk_scaling_factor=self.routed_scaling_factor, moe_router_pre_softmax=False,
            moe_router_dtype="fp32", moe_router_load_balancing_type="none", moe_aux_loss_coeff=0.0,
            moe_shared_expert_intermediate_size=(self.num_shared_experts * self.moe_intermediate_size
                                                 if self.num_shared_experts else None),
            moe_layer_freq=self.moe_layer_pattern, **(moe_kernels or MoEKernels()).transformer_config_fields(),
            # Parallelism. MoE with TP > 1 requires sequence parallelism in megatron-core.
            tensor_model_parallel_size=layout.tp, pipeline_model_parallel_size=layout.pp,
            expert_model_parallel_size=layout.ep, expert_tensor_parallel_size=layout.etp,
            sequence_parallel=layout.tp > 1, use_cpu_initialization=use_cpu_initialization,
            params_dtype=params_dtype, pipeline_dtype=params_dtype, bf16=params_dtype == torch.bfloat16,
            fp16=params_dtype == torch.float16, batch_p2p_comm=False, variable_seq_lengths=False,
        )


def _rotary_dim(raw: dict, head_dim: int, source: str) -> int:
    """Rotary channels per head from `rotary_dim` and/or `partial_rotary_factor` (they must agree)."""
    factor = raw.get("partial_rotary_factor")
    dim = raw.get("rotary_dim")
    from_factor = int(head_dim * float(factor)) if factor is not None else None
    if dim is not None and from_factor is not None and int(dim) != from_factor:
        raise LLaDA2ConfigError(f"{source}: rotary_dim={dim} disagrees with partial_rotary_factor={factor} x "
                                f"head_dim={head_dim} = {from_factor}")
    result = int(dim) if dim is not None else (from_factor if from_factor is not None else head_dim)
    if result <= 0 or result % 2 or result > head_dim:
        raise LLaDA2ConfigError(f"{source}: rotary dimension {result} must be even and in (0, head_dim={head_dim}]")
    return result


def _check_router(raw: dict, source: str) -> None:
    """Refuse router settings megatron-core's router would compute differently from LLaDA2's gate."""
    score = raw.get("score_function", "sigmoid")
    if score != "sigmoid":
        raise UnsupportedRouterSetting(f"{source}: score_function={score!r}; the LLaDA2 gate is sigmoid with an "
                                       "expert bias, expected 'sigmoid'")
    if raw.get("moe_router_enable_expert_bias", True) is False:
        raise UnsupportedRouterSetting(f"{source}: moe_router_enable_expert_bias=false; LLaDA2 checkpoints carry "
                                       "gate.expert_bias, expected true")
    topk, n_group, topk_group = int(raw.get("num_experts_per_tok", 1)), int(raw.get("n_group") or 1), \
        int(raw.get("topk_group") or 1)
    experts = int(raw.get("num_experts") or 0)
    if topk > 1 and raw.get("norm_topk_prob", True) is False:
        raise UnsupportedRouterSetting(f"{source}: norm_topk_prob=false with num_experts_per_tok={topk}; "
                                       "megatron-core always normalises sigmoid top-k weights, expected true")
    if n_group > 1:
        if experts % n_group:
            raise UnsupportedRouterSetting(f"{source}: n_group={n_group} does not divide num_experts={experts}")
        if not 1 <= topk_group <= n_group:
            raise UnsupportedRouterSetting(f"{source}: topk_group={topk_group} must lie in [1, n_group={n_group}]")
        # LLaDA2 scores a group by the sum of its top-2 experts; megatron uses top-(topk // topk_group).
        if topk // topk_group != 2:
            raise UnsupportedRouterSetting(
                f"{source}: num_experts_per_tok // topk_group = {topk} // {topk_group} = {topk // topk_group}; "
                "megatron-core scores an expert group by its top-(topk // group_topk) experts while LLaDA2 "
                "uses its top-2, so only settings with num_experts_per_tok // topk_group == 2 are exact")

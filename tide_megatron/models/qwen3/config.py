"""HF Qwen3 config.json -> megatron-core TransformerConfig plus the model-level arguments (spec §1.1), and the
WeDLM-8B variant of the same layout (§2.2)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Optional, Union

import torch
import torch.nn.functional as F
from megatron.core.transformer.transformer_config import TransformerConfig

from tide_megatron.models.convert.hf_files import read_hf_config

QWEN3_MODEL_TYPES = ("qwen3",)
WEDLM_MODEL_TYPES = ("wedlm", "qwen3")


@dataclass
class Qwen3Args:
    """Everything needed to build the megatron model and to map it back to HF."""

    config: TransformerConfig
    vocab_size: int
    max_position_embeddings: int
    rotary_base: float
    rotary_percent: float = 1.0
    tie_embeddings: bool = True
    hf_config: dict[str, Any] = field(default_factory=dict)


def _rope_theta(hf: dict[str, Any], source: str) -> float:
    """θ from `rope_theta` (transformers 4.x) or `rope_parameters.rope_theta` (5.x); only default RoPE."""
    params = hf.get("rope_parameters") or {}
    scaling = hf.get("rope_scaling") or {}
    for what in (params, scaling):
        rope_type = what.get("rope_type", what.get("type", "default"))
        if rope_type not in ("default", None):
            raise ValueError(f"{source}: rope type {rope_type!r} is not supported (expected default RoPE)")
    theta = params.get("rope_theta", hf.get("rope_theta"))
    if theta is None:
        raise ValueError(f"{source}: missing field rope_theta")
    return float(theta)


def _require(hf: dict[str, Any], key: str, source: str) -> Any:
    if key not in hf:
        raise ValueError(f"{source}: missing field {key!r}")
    return hf[key]


def qwen3_args_from_hf(
    hf: Union[dict[str, Any], str, os.PathLike],
    tp: int = 1,
    pp: int = 1,
    params_dtype: torch.dtype = torch.float32,
    model_types: tuple[str, ...] = QWEN3_MODEL_TYPES,
    source: Optional[str] = None,
    **overrides: Any,
) -> Qwen3Args:
    """Map an HF Qwen3 config to megatron-core; clear errors for another architecture or a bad TP size.

    `overrides` go straight into TransformerConfig (e.g. sequence_parallel, recompute settings).
    """
    if not isinstance(hf, dict):
        source = source or os.path.join(str(hf), "config.json")
        hf = read_hf_config(hf)
    source = source or "config.json"
    model_type = hf.get("model_type")
    if model_type not in model_types:
        raise ValueError(f"{source}: model_type {model_type!r} / architectures {hf.get('architectures')} "
                         f"is not a supported architecture here (expected model_type in {list(model_types)})")
    if hf.get("hidden_act", "silu") != "silu":
        raise ValueError(f"{source}: hidden_act {hf.get('hidden_act')!r} unsupported (expected 'silu')")
    if hf.get("use_sliding_window"):
        raise ValueError(f"{source}: use_sliding_window=true is not supported (expected full attention)")
    heads = int(_require(hf, "num_attention_heads", source))
    groups = int(hf.get("num_key_value_heads") or heads)
    hidden = int(_require(hf, "hidden_size", source))
    head_dim = int(hf.get("head_dim") or hidden // heads)
    layers = int(_require(hf, "num_hidden_layers", source))
    vocab = int(_require(hf, "vocab_size", source))
    for name, value in (("num_attention_heads", heads), ("num_key_value_heads", groups), ("vocab_size", vocab)):
        if value % tp:
            raise ValueError(f"--tp {tp} does not divide {name} = {value} in {source}")
    if layers % pp:
        raise ValueError(f"--pp {pp} does not divide num_hidden_layers = {layers} in {source}")
    kwargs: dict[str, Any] = dict(
        num_layers=layers,
        hidden_size=hidden,
        ffn_hidden_size=int(_require(hf, "intermediate_size", source)),
        num_attention_heads=heads,
        num_query_groups=groups,
        kv_channels=head_dim,
        normalization="RMSNorm",
        layernorm_epsilon=float(hf.get("rms_norm_eps", 1e-6)),
        qk_layernorm=True,
        gated_linear_unit=True,
        activation_func=F.silu,
        add_bias_linear=False,
        add_qkv_bias=bool(hf.get("attention_bias", False)),
        hidden_dropout=0.0,
        attention_dropout=float(hf.get("attention_dropout", 0.0)),
        init_method_std=float(hf.get("initializer_range", 0.02)),
        tensor_model_parallel_size=tp,
        pipeline_model_parallel_size=pp,
        params_dtype=params_dtype,
        pipeline_dtype=params_dtype,
        bf16=params_dtype == torch.bfloat16,
        fp16=params_dtype == torch.float16,
        use_cpu_initialization=not torch.cuda.is_available(),
        # Fusions that need TE/apex or would compile kernels; explicit-position RoPE is unfused.
        apply_rope_fusion=False,
        bias_activation_fusion=False,
        bias_dropout_fusion=False,
        masked_softmax_fusion=False,
        gradient_accumulation_fusion=False,
        persist_layer_norm=False,
    )
    kwargs.update(overrides)
    return Qwen3Args(
        config=TransformerConfig(**kwargs),
        vocab_size=vocab,
        max_position_embeddings=int(hf.get("max_position_embeddings", 40960)),
        rotary_base=_rope_theta(hf, source),
        rotary_percent=float(hf.get("partial_rotary_factor", 1.0)),
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        hf_config=dict(hf),
    )


def wedlm_args_from_hf(hf: Union[dict[str, Any], str, os.PathLike], tp: int = 1, pp: int = 1,
                       params_dtype: torch.dtype = torch.bfloat16, source: Optional[str] = None,
                       **overrides: Any) -> Qwen3Args:
    """Qwen3 arguments for a WeDLM (or plain Qwen3) checkpoint; the WeDLM-7B layout (no QK-norm) is refused."""
    if not isinstance(hf, dict):
        source = source or os.path.join(str(hf), "config.json")
        hf = read_hf_config(hf)
    source = source or "config.json"
    if hf.get("qk_norm") is False:
        raise ValueError(f"{source}: qk_norm=false (the Qwen2.5-based WeDLM-7B layout); the WeDLM teacher expects "
                         "the Qwen3-8B layout with QK-norm")
    if any(t != "full_attention" for t in hf.get("layer_types") or []):
        raise ValueError(f"{source}: layer_types must all be 'full_attention' (§2.2), got {set(hf['layer_types'])}")
    settings = dict(perform_initialization=False, pipeline_dtype=params_dtype, batch_p2p_comm=False)
    return qwen3_args_from_hf(hf, tp=tp, pp=pp, params_dtype=params_dtype, model_types=WEDLM_MODEL_TYPES,
                              source=source, **{**settings, **overrides})

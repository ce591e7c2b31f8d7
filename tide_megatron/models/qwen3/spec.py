"""Qwen3 layer spec: the dense pre-norm layer with RMSNorm QK-norm, from the chosen backend."""

from __future__ import annotations

from typing import Optional

from megatron.core.transformer.transformer_block import TransformerBlockSubmodules
from megatron.core.transformer.transformer_config import TransformerConfig

from tide_megatron.models.spec import dense_block_spec


def qwen3_block_spec(config: TransformerConfig, backend: Optional[str] = None,
                     pp_rank: int = 0) -> TransformerBlockSubmodules:
    """Block spec for one pipeline stage of a Qwen3 model (QK-norm on, norms unfused)."""
    if not config.qk_layernorm:
        raise ValueError("Qwen3 uses QK-norm: TransformerConfig.qk_layernorm must be True")
    return dense_block_spec(config, backend, pp_rank)

"""LLaDA2.0-mini MoE teacher on megatron-core (§2.1): HF config mapping, layer specs, model, HF loading."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

from tide_megatron.models.llada2.config import LLaDA2Config, LLaDA2ConfigError, UnsupportedRouterSetting
from tide_megatron.models.llada2.convert import load_llada2_from_hf
from tide_megatron.models.llada2.model import build_llada2_model, forward_llada2
from tide_megatron.models.safetensors_reader import CheckpointError


def load_llada2_teacher(hf_dir: Path, pgs, params_dtype: torch.dtype = torch.bfloat16,
                        expected_vocab_size: Optional[int] = None):
    """Read config.json, build this rank's megatron shard and stream its weights in; returns (model, cfg)."""
    cfg = LLaDA2Config.from_pretrained(hf_dir)
    model = build_llada2_model(cfg, pgs, params_dtype)
    load_llada2_from_hf(model, Path(hf_dir), cfg, pgs, expected_vocab_size=expected_vocab_size)
    return model, cfg


__all__ = ["CheckpointError", "LLaDA2Config", "LLaDA2ConfigError", "UnsupportedRouterSetting", "build_llada2_model",
           "forward_llada2", "load_llada2_from_hf", "load_llada2_teacher"]

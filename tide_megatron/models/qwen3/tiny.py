"""Tiny random HF Qwen3 checkpoints made with transformers' own class (tests and the tiny default)."""

from __future__ import annotations

from typing import Any, Optional

import torch
from transformers import Qwen3Config, Qwen3ForCausalLM


def tiny_qwen3_config(vocab_size: int = 128, **overrides: Any):
    """A few-thousand-parameter Qwen3 config keeping the real layout: GQA (4 q / 2 kv), QK-norm, tied head."""
    kwargs: dict[str, Any] = dict(vocab_size=vocab_size, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                  num_attention_heads=4, num_key_value_heads=2, head_dim=32,
                                  tie_word_embeddings=True, max_position_embeddings=512, rope_theta=10000.0,
                                  rms_norm_eps=1e-6)
    kwargs.update(overrides)
    return Qwen3Config(**kwargs)


def save_tiny_qwen3(out_dir: str, seed: int = 0, max_shard_size: Optional[str] = None, **overrides: Any):
    """Save a randomly initialised `Qwen3ForCausalLM` (safetensors; sharded when `max_shard_size` is set)."""
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(tiny_qwen3_config(**overrides)).eval()
    with torch.no_grad():  # norms start at 1.0: perturb them so the conversion test sees every tensor
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(out_dir, **kwargs)
    return model

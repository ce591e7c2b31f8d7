"""Qwen3 conversion: the HF <-> megatron weight mapping and input checks, as an `Architecture`,
plus Qwen3-bound shortcuts to the generic operations of `tide_megatron.models.converter`."""

from __future__ import annotations

import os
from typing import Any, Optional

from tide_megatron.models import converter
from tide_megatron.models.conversion import ParamRule, WeightMapping
from tide_megatron.models.converter import (Architecture, hf_additive_mask, load_hf_reference,  # noqa: F401
                                            load_mcore_checkpoint, read_mcore_meta)
from tide_megatron.models.qwen3.config import Qwen3Args, qwen3_args_from_hf
from tide_megatron.models.safetensors_reader import SafetensorsReader


def qwen3_mapping(args: Qwen3Args) -> WeightMapping:
    """HF Qwen3 key <-> megatron key rules (fused QKV and gate/up; TP kinds per megatron layer)."""
    L, A = "decoder.layers.{i}.", "model.layers.{i}."
    rules = [
        ParamRule("embedding.word_embeddings.weight", ("model.embed_tokens.weight",), "column"),
        ParamRule(L + "input_layernorm.weight", (A + "input_layernorm.weight",)),
        ParamRule(L + "self_attention.linear_qkv.weight", tuple(A + f"self_attn.{p}_proj.weight" for p in "qkv"),
                  "qkv"),
        ParamRule(L + "self_attention.linear_qkv.bias", tuple(A + f"self_attn.{p}_proj.bias" for p in "qkv"), "qkv"),
        ParamRule(L + "self_attention.q_layernorm.weight", (A + "self_attn.q_norm.weight",)),
        ParamRule(L + "self_attention.k_layernorm.weight", (A + "self_attn.k_norm.weight",)),
        ParamRule(L + "self_attention.linear_proj.weight", (A + "self_attn.o_proj.weight",), "row"),
        ParamRule(L + "pre_mlp_layernorm.weight", (A + "post_attention_layernorm.weight",)),
        ParamRule(L + "mlp.linear_fc1.weight", (A + "mlp.gate_proj.weight", A + "mlp.up_proj.weight"), "gate_up"),
        ParamRule(L + "mlp.linear_fc2.weight", (A + "mlp.down_proj.weight",), "row"),
        ParamRule("decoder.final_layernorm.weight", ("model.norm.weight",)),
        # With tied embeddings only a last pipeline stage that lacks the embedding holds this copy.
        ParamRule("output_layer.weight",
                  ("model.embed_tokens.weight" if args.tie_embeddings else "lm_head.weight",), "column"),
    ]
    cfg = args.config
    return WeightMapping(rules, cfg.num_attention_heads, cfg.num_query_groups, cfg.kv_channels,
                         tied_embeddings=args.tie_embeddings)


def check_vocab(args: Qwen3Args, reader: SafetensorsReader, hf_dir: str) -> None:
    """Embedding rows == config vocab_size >= the tokenizer's size (when a tokenizer.json is present)."""
    config_file = os.path.join(hf_dir, "config.json")
    rows = reader.shape("model.embed_tokens.weight")[0]
    if rows != args.vocab_size:
        raise ValueError(f"{reader.key_to_file['model.embed_tokens.weight']}: model.embed_tokens.weight has {rows} "
                         f"rows but {config_file} says vocab_size = {args.vocab_size}")
    tok_file = os.path.join(hf_dir, "tokenizer.json")
    if os.path.isfile(tok_file):
        from tokenizers import Tokenizer

        n = Tokenizer.from_file(tok_file).get_vocab_size(with_added_tokens=True)
        if n > args.vocab_size:
            raise ValueError(f"{tok_file}: the tokenizer has {n} ids but {config_file} vocab_size is "
                             f"{args.vocab_size} (expected vocab_size >= tokenizer size)")


def build_model_for(args: Qwen3Args, pgs, backend: Optional[str] = None, parallel_output: bool = True):
    """`build_qwen3_model` with the builder signature an `Architecture` expects."""
    from tide_megatron.models.qwen3.model import build_qwen3_model

    return build_qwen3_model(args, pgs, backend=backend, parallel_output=parallel_output)


QWEN3 = Architecture(name="qwen3", args_from_hf=qwen3_args_from_hf, mapping=qwen3_mapping,
                     build_model=build_model_for, check_hf=check_vocab)


def qwen3_args_from_mcore(mcore_dir: str, tp: int = 1, pp: int = 1, dtype: Optional[str] = None,
                          **overrides: Any) -> Qwen3Args:
    """Model arguments to load a converted Qwen3 directory at any TP/PP."""
    return converter.args_from_mcore(QWEN3, mcore_dir, tp=tp, pp=pp, dtype=dtype, **overrides)


def hf_to_mcore(hf_dir: str, out_dir: str, tp: int = 1, pp: int = 1, dtype: str = "float32",
                backend: Optional[str] = None) -> None:
    """HF Qwen3 directory -> megatron dist checkpoint (see `converter.hf_to_mcore`)."""
    converter.hf_to_mcore(QWEN3, hf_dir, out_dir, tp=tp, pp=pp, dtype=dtype, backend=backend)


def mcore_to_hf(mcore_dir: str, out_dir: str, dtype: Optional[str] = None, max_shard_bytes: int = 2 * 1024**3) -> None:
    """Megatron dist checkpoint -> HF Qwen3 directory (see `converter.mcore_to_hf`)."""
    converter.mcore_to_hf(QWEN3, mcore_dir, out_dir, dtype=dtype, max_shard_bytes=max_shard_bytes)


def verify(hf_dir: str, mcore_dir: str, **kwargs: Any) -> dict[str, float]:
    """Max |logit difference| against transformers under causal and block-diffusion masks."""
    return converter.verify(QWEN3, hf_dir, mcore_dir, **kwargs)

"""The Qwen3 layout's weight mapping and its two `Architecture`s: the Qwen3 student and the WeDLM-8B teacher.

Key map (HF -> megatron, per layer i; the norms go wherever the layer spec puts them):
  model.embed_tokens                       -> embedding.word_embeddings (vocab rows per TP rank)
  model.layers.i.input_layernorm           -> input_layernorm, or self_attention.linear_qkv.layer_norm_weight (fused)
  model.layers.i.self_attn.{q,k,v}_proj    -> self_attention.linear_qkv (per query group [q_g; k_g; v_g])
  model.layers.i.self_attn.{q,k}_norm      -> self_attention.{q,k}_layernorm
  model.layers.i.self_attn.o_proj          -> self_attention.linear_proj (input columns per TP rank)
  model.layers.i.post_attention_layernorm  -> pre_mlp_layernorm, or mlp.linear_fc1.layer_norm_weight (fused)
  model.layers.i.mlp.{gate,up,down}_proj   -> mlp.linear_fc1 = [gate; up], mlp.linear_fc2
  model.norm, lm_head (or embed_tokens when tied) -> decoder.final_layernorm, output_layer
"""

from __future__ import annotations

import os
from typing import Any, Optional, Union

import torch
from tokenizers import Tokenizer
from transformers import Qwen3Config

from tide_megatron.diffusion.masks import block_diffusion_mask
from tide_megatron.models.convert.architecture import Architecture, VerifyCases
from tide_megatron.models.convert.hf_files import read_hf_config
from tide_megatron.models.convert.mapping import ParamRule, WeightMapping
from tide_megatron.models.convert.reference import load_hf_reference
from tide_megatron.models.qwen3.config import Qwen3Args, qwen3_args_from_hf, wedlm_args_from_hf
from tide_megatron.models.qwen3.model import build_qwen3_model
from tide_megatron.models.safetensors_reader import SafetensorsReader

#: config.json fields that are not Qwen3Config arguments (WeDLM's own markers, remote-code pointers)
_NOT_QWEN3_FIELDS = ("model_type", "architectures", "auto_map", "transformers_version", "qk_norm")


def qwen3_mapping(args: Qwen3Args) -> WeightMapping:
    """HF Qwen3 <-> megatron rules (fused QKV and gate/up; norms unfused or fused into the next linear)."""
    L, A = "decoder.layers.{i}.", "model.layers.{i}."
    input_norm, post_norm = (A + "input_layernorm.weight",), (A + "post_attention_layernorm.weight",)
    rules = [
        ParamRule("embedding.word_embeddings.weight", ("model.embed_tokens.weight",), "column"),
        ParamRule(L + "input_layernorm.weight", input_norm),
        ParamRule(L + "self_attention.linear_qkv.layer_norm_weight", input_norm),
        ParamRule(L + "self_attention.linear_qkv.weight", tuple(A + f"self_attn.{p}_proj.weight" for p in "qkv"),
                  "qkv"),
        ParamRule(L + "self_attention.linear_qkv.bias", tuple(A + f"self_attn.{p}_proj.bias" for p in "qkv"), "qkv"),
        ParamRule(L + "self_attention.q_layernorm.weight", (A + "self_attn.q_norm.weight",)),
        ParamRule(L + "self_attention.k_layernorm.weight", (A + "self_attn.k_norm.weight",)),
        ParamRule(L + "self_attention.linear_proj.weight", (A + "self_attn.o_proj.weight",), "row"),
        ParamRule(L + "pre_mlp_layernorm.weight", post_norm),
        ParamRule(L + "mlp.linear_fc1.layer_norm_weight", post_norm),
        ParamRule(L + "mlp.linear_fc1.weight", (A + "mlp.gate_proj.weight", A + "mlp.up_proj.weight"), "gate_up"),
        ParamRule(L + "mlp.linear_fc2.weight", (A + "mlp.down_proj.weight",), "row"),
        ParamRule("decoder.final_layernorm.weight", ("model.norm.weight",)),
        # With tied embeddings only a last pipeline stage that lacks the embedding holds this copy.
        ParamRule("output_layer.weight",
                  ("model.embed_tokens.weight" if args.tie_embeddings else "lm_head.weight",), "column"),
    ]
    cfg = args.config
    return WeightMapping(rules, cfg.num_attention_heads, cfg.num_query_groups, cfg.kv_channels,
                         skippable=("lm_head.weight",) if args.tie_embeddings else ())


def check_vocab(args: Qwen3Args, reader: SafetensorsReader, hf_dir: str) -> None:
    """Embedding rows == config vocab_size >= the tokenizer's size (when a tokenizer.json is present)."""
    config_file = os.path.join(hf_dir, "config.json")
    rows = reader.shape("model.embed_tokens.weight")[0]
    if rows != args.vocab_size:
        raise ValueError(f"{reader.key_to_file['model.embed_tokens.weight']}: model.embed_tokens.weight has {rows} "
                         f"rows but {config_file} says vocab_size = {args.vocab_size}")
    tok_file = os.path.join(hf_dir, "tokenizer.json")
    if os.path.isfile(tok_file):
        n = Tokenizer.from_file(tok_file).get_vocab_size(with_added_tokens=True)
        if n > args.vocab_size:
            raise ValueError(f"{tok_file}: the tokenizer has {n} ids but {config_file} vocab_size is "
                             f"{args.vocab_size} (expected vocab_size >= tokenizer size)")


def _no_experts(ep: int) -> None:
    if ep != 1:
        raise ValueError(f"--ep {ep}: the Qwen3 layout has no experts (expected 1)")


def qwen3_args(hf: Union[dict, str], tp: int = 1, pp: int = 1, ep: int = 1,
                 params_dtype: torch.dtype = torch.float32, source: Optional[str] = None, **overrides: Any) -> Qwen3Args:
    """`qwen3_args_from_hf` with the Architecture signature (weights come from the checkpoint: no init)."""
    _no_experts(ep)
    return qwen3_args_from_hf(hf, tp=tp, pp=pp, params_dtype=params_dtype, source=source,
                              **{"perform_initialization": False, **overrides})


def wedlm_args(hf: Union[dict, str], tp: int = 1, pp: int = 1, ep: int = 1,
               params_dtype: torch.dtype = torch.bfloat16, source: Optional[str] = None, **overrides: Any) -> Qwen3Args:
    """`wedlm_args_from_hf` with the Architecture signature."""
    _no_experts(ep)
    return wedlm_args_from_hf(hf, tp=tp, pp=pp, params_dtype=params_dtype, source=source, **overrides)


def build_model(args: Qwen3Args, pgs, backend: Optional[str] = None) -> torch.nn.Module:
    """`build_qwen3_model` with vocab-parallel logits (the Architecture builder)."""
    return build_qwen3_model(args, pgs, backend=backend)


def qwen3_reference(hf_dir: str, trust_remote_code: bool = False) -> torch.nn.Module:
    """transformers' own Qwen3 class for a Qwen3 checkpoint (never the checkpoint's own code)."""
    return load_hf_reference(hf_dir)


def wedlm_reference(hf_dir: str, trust_remote_code: bool = False) -> torch.nn.Module:
    """transformers' own `Qwen3ForCausalLM` with the WeDLM weights (WeDLM-8B is the Qwen3-8B layout, §2.2);
    the checkpoint's own modeling code is never needed."""
    fields = {k: v for k, v in read_hf_config(hf_dir).items() if k not in _NOT_QWEN3_FIELDS}
    return load_hf_reference(hf_dir, Qwen3Config(**fields))


def block_diffusion_cases(order: str) -> Any:
    """verify inputs: causal over L, and the block-diffusion mask in `order` over 2L with duplicated positions."""

    def cases(vocab: int, seq_len: int, block_size: int, batch: int, gen: torch.Generator) -> VerifyCases:
        pos = torch.arange(seq_len).expand(batch, seq_len)
        causal = torch.ones(seq_len, seq_len, dtype=torch.bool).tril()
        two = torch.randint(0, vocab, (batch, 2 * seq_len), generator=gen)
        return {"causal": (two[:, :seq_len], pos, causal),
                "block_diffusion": (two, pos.repeat(1, 2), block_diffusion_mask(seq_len, block_size, order))}

    return cases


QWEN3 = Architecture(name="qwen3", args_from_hf=qwen3_args, mapping=qwen3_mapping, build_model=build_model,
                     reference=qwen3_reference,
                     verify_cases=block_diffusion_cases("xt_x0"), check_hf=check_vocab)

WEDLM = Architecture(name="wedlm", args_from_hf=wedlm_args, mapping=qwen3_mapping, build_model=build_model,
                     reference=wedlm_reference, verify_cases=block_diffusion_cases("x0_xt"), check_hf=check_vocab)

"""The LLaDA2-MoE weight mapping and its `Architecture` (§2.1): the released HF layout <-> megatron-core.

Key map (HF -> megatron, per layer i; experts e global, megatron's local index k = e - ep_rank * E/ep):
  model.word_embeddings                          -> embedding.word_embeddings (vocab rows per TP rank)
  model.layers.i.input_layernorm                 -> input_layernorm, or self_attention.linear_qkv.layer_norm_weight
  model.layers.i.attention.query_key_value       -> self_attention.linear_qkv ([q;k;v] -> per group [q_g;k_g;v_g])
  model.layers.i.attention.{query,key}_layernorm -> self_attention.{q,k}_layernorm
  model.layers.i.attention.dense                 -> self_attention.linear_proj (input columns per TP rank)
  model.layers.i.post_attention_layernorm        -> pre_mlp_layernorm (MoE layers, and unfused dense layers) or
                                                    mlp.linear_fc1.layer_norm_weight (a dense layer's fused fc1)
  model.layers.i.mlp.{gate,up,down}_proj         -> mlp.linear_fc1 = [gate; up], mlp.linear_fc2 (first k dense layers)
  model.layers.i.mlp.gate.{weight,expert_bias}   -> mlp.router.{weight,expert_bias} (expert bias: a buffer)
  model.layers.i.mlp.experts.e.*                 -> mlp.experts.local_experts.k.* (SequentialMLP) or
                                                    mlp.experts.linear_fc{1,2}.weight{k} (grouped GEMM); over ETP
  model.layers.i.mlp.shared_experts.*            -> mlp.shared_experts.* (over TP)
  model.norm, lm_head (word_embeddings if tied)  -> decoder.final_layernorm, output_layer (vocab rows)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import torch
from megatron.core.process_groups_config import ProcessGroupCollection

from tide_megatron.distributed.grids import ParallelLayout
from tide_megatron.models.convert.architecture import Architecture, VerifyCases
from tide_megatron.models.convert.mapping import ParamRule, WeightMapping
from tide_megatron.models.convert.reference import load_remote_code_reference
from tide_megatron.models.llada2.config import LLaDA2Config
from tide_megatron.models.llada2.model import build_llada2_model
from tide_megatron.models.moe_kernels import MoEKernels
from tide_megatron.models.safetensors_reader import CheckpointError, SafetensorsReader


@dataclass(frozen=True)
class LLaDA2Args:
    """The checked HF config plus the dtype to build in (the layout comes from the process groups)."""

    cfg: LLaDA2Config
    params_dtype: torch.dtype
    moe_kernels: Optional[MoEKernels] = None  # None: the backend's default (models/moe_kernels.py)

    @property
    def vocab_size(self) -> int:
        return self.cfg.vocab_size


def llada2_args(hf: Union[dict, str, Path], tp: int = 1, pp: int = 1, ep: int = 1,
                params_dtype: torch.dtype = torch.bfloat16, source: Optional[str] = None,
                moe_kernels: Optional[MoEKernels] = None, **overrides: Any) -> LLaDA2Args:
    """Read and check config.json (a dict, a directory or the file) for a TP x PP x EP layout."""
    if overrides:
        raise ValueError(f"LLaDA2 takes no TransformerConfig overrides here, got {sorted(overrides)}")
    cfg = (LLaDA2Config.from_dict(hf, source=source or "config.json") if isinstance(hf, dict)
           else LLaDA2Config.from_pretrained(hf))
    cfg.check_layout(ParallelLayout(tp=tp, pp=pp, ep=ep))
    return LLaDA2Args(cfg=cfg, params_dtype=params_dtype, moe_kernels=moe_kernels)


def llada2_mapping(args: LLaDA2Args) -> WeightMapping:
    """Released LLaDA2 HF keys <-> megatron keys, dense and MoE layers, either expert module, either norm layout."""
    c = args.cfg
    L, A = "decoder.layers.{i}.", "model.layers.{i}."
    E, X = A + "mlp.experts.{e}.", A + "mlp.shared_experts."
    input_norm, post_norm = (A + "input_layernorm.weight",), (A + "post_attention_layernorm.weight",)
    gate_up = lambda prefix: (prefix + "gate_proj.weight", prefix + "up_proj.weight")  # noqa: E731
    rules = [
        ParamRule("embedding.word_embeddings.weight", ("model.word_embeddings.weight",), "column"),
        ParamRule(L + "input_layernorm.weight", input_norm),
        ParamRule(L + "self_attention.linear_qkv.layer_norm_weight", input_norm),
        ParamRule(L + "self_attention.linear_qkv.weight", (A + "attention.query_key_value.weight",), "qkv"),
        ParamRule(L + "self_attention.linear_qkv.bias", (A + "attention.query_key_value.bias",), "qkv"),
        ParamRule(L + "self_attention.q_layernorm.weight", (A + "attention.query_layernorm.weight",)),
        ParamRule(L + "self_attention.k_layernorm.weight", (A + "attention.key_layernorm.weight",)),
        ParamRule(L + "self_attention.linear_proj.weight", (A + "attention.dense.weight",), "row"),
        ParamRule(L + "pre_mlp_layernorm.weight", post_norm),
        ParamRule(L + "mlp.linear_fc1.layer_norm_weight", post_norm),
        # the first k layers: a dense SwiGLU
        ParamRule(L + "mlp.linear_fc1.weight", gate_up(A + "mlp."), "gate_up"),
        ParamRule(L + "mlp.linear_fc2.weight", (A + "mlp.down_proj.weight",), "row"),
        # the MoE layers: router, routed experts (sequential or grouped-GEMM modules), shared expert
        ParamRule(L + "mlp.router.weight", (A + "mlp.gate.weight",)),
        ParamRule(L + "mlp.router.expert_bias", (A + "mlp.gate.expert_bias",)),
        ParamRule(L + "mlp.experts.local_experts.{e}.linear_fc1.weight", gate_up(E), "gate_up"),
        ParamRule(L + "mlp.experts.local_experts.{e}.linear_fc2.weight", (E + "down_proj.weight",), "row"),
        ParamRule(L + "mlp.experts.linear_fc1.weight{e}", gate_up(E), "gate_up"),
        ParamRule(L + "mlp.experts.linear_fc2.weight{e}", (E + "down_proj.weight",), "row"),
        ParamRule(L + "mlp.shared_experts.linear_fc1.weight", gate_up(X), "gate_up"),
        ParamRule(L + "mlp.shared_experts.linear_fc2.weight", (X + "down_proj.weight",), "row"),
        ParamRule("decoder.final_layernorm.weight", ("model.norm.weight",)),
        ParamRule("output_layer.weight",
                  ("model.word_embeddings.weight" if c.tie_word_embeddings else "lm_head.weight",), "column"),
    ]
    return WeightMapping(rules, c.num_attention_heads, c.num_key_value_heads, c.head_dim,
                         skippable=("lm_head.weight",) if c.tie_word_embeddings else ())


def check_vocab(args: LLaDA2Args, reader: SafetensorsReader, hf_dir: str) -> None:
    """The embedding has config.json's vocab_size rows."""
    key = "model.word_embeddings.weight"
    if key in reader:
        rows = reader.shape(key)[0]
        if rows != args.vocab_size:
            raise CheckpointError(f"{reader.key_to_file[key]}: embedding has {rows} rows, config.json "
                                  f"vocab_size={args.vocab_size}: vocabulary mismatch")


def build_model(args: LLaDA2Args, pgs: ProcessGroupCollection, backend: Optional[str] = None) -> torch.nn.Module:
    """`build_llada2_model` with the Architecture builder signature (vocab-parallel logits)."""
    return build_llada2_model(args.cfg, pgs, args.params_dtype, backend=backend, moe_kernels=args.moe_kernels)


def reference(hf_dir: str, trust_remote_code: bool = False) -> torch.nn.Module:
    """The checkpoint's own modeling code (released LLaDA2 checkpoints carry it; transformers has no class)."""
    return load_remote_code_reference(hf_dir, trust_remote_code)


def verify_cases(vocab: int, seq_len: int, block_size: int, batch: int, gen: torch.Generator) -> VerifyCases:
    """The teacher's own use (§2.1): one bidirectional sequence; with and without key padding (last quarter of
    the last sequence), as 4-D masks so that no modeling code turns them causal."""
    ids = torch.randint(0, vocab, (batch, seq_len), generator=gen)
    pos = torch.arange(seq_len).expand(batch, seq_len)
    real = torch.ones(batch, seq_len, dtype=torch.bool)
    real[-1, seq_len - max(1, seq_len // 4):] = False
    everything = torch.ones(batch, 1, seq_len, seq_len, dtype=torch.bool)
    return {"bidirectional": (ids, pos, everything),
            "key_padding": (ids, pos, everything & real[:, None, None, :])}


LLADA2 = Architecture(name="llada2", args_from_hf=llada2_args, mapping=llada2_mapping, build_model=build_model,
                      reference=reference, verify_cases=verify_cases, check_hf=check_vocab)


def load_llada2_teacher(hf_dir: Union[str, Path], pgs: ProcessGroupCollection,
                        params_dtype: torch.dtype = torch.bfloat16, expected_vocab_size: Optional[int] = None,
                        backend: Optional[str] = None,
                        moe_kernels: Optional[MoEKernels] = None) -> tuple[torch.nn.Module, LLaDA2Config]:
    """This rank's teacher for the layout of `pgs`, its weights streamed from `hf_dir`; returns (model, config).
    ``moe_kernels`` (from the teacher config) defaults to the backend's default."""
    if expected_vocab_size is not None:
        cfg = LLaDA2Config.from_pretrained(hf_dir)
        if expected_vocab_size != cfg.vocab_size:
            raise CheckpointError(f"{Path(hf_dir) / 'config.json'}: vocab_size={cfg.vocab_size}, but the tokenizer / "
                                  f"caller expects {expected_vocab_size}")
    model, args, _ = LLADA2.build_from_hf(hf_dir, pgs, params_dtype, backend=backend, moe_kernels=moe_kernels)
    return model, args.cfg

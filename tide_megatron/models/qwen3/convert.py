"""Qwen3: HF safetensors directory <-> megatron-core dist checkpoint, and a logits parity check.

Layout of a megatron directory written here: the dist checkpoint (torch_dist) at the root, plus
`tide_model.json` (architecture, TP/PP it was written at, dtype) and `hf/` (config.json, tokenizer and
other small files of the source HF directory, so the way back to HF is self-contained).
"""

from __future__ import annotations

import json
import os
from typing import Callable, Optional

import torch
import torch.distributed as dist

from tide_megatron.models.conversion import (HFCheckpointReader, ParamRule, WeightMapping, atomic_output_dir,
                                             copy_hf_assets, iter_hf_tensors, load_hf_into_model,
                                             write_hf_safetensors)
from tide_megatron.models.qwen3.config import Qwen3Args, qwen3_args_from_hf, read_hf_config

META_FILE = "tide_model.json"
HF_ASSETS = "hf"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def qwen3_mapping(args: Qwen3Args) -> WeightMapping:
    """HF Qwen3 key <-> megatron key rules (fused QKV and gate/up; TP kinds per megatron layer)."""
    L, A, M = "decoder.layers.{i}.", "model.layers.{i}.", "mlp."
    rules = [
        ParamRule("embedding.word_embeddings.weight", ("model.embed_tokens.weight",), "column"),
        ParamRule(L + "input_layernorm.weight", (A + "input_layernorm.weight",)),
        ParamRule(L + "self_attention.linear_qkv.weight",
                  tuple(A + f"self_attn.{p}_proj.weight" for p in "qkv"), "qkv"),
        ParamRule(L + "self_attention.linear_qkv.bias", tuple(A + f"self_attn.{p}_proj.bias" for p in "qkv"), "qkv"),
        ParamRule(L + "self_attention.q_layernorm.weight", (A + "self_attn.q_norm.weight",)),
        ParamRule(L + "self_attention.k_layernorm.weight", (A + "self_attn.k_norm.weight",)),
        ParamRule(L + "self_attention.linear_proj.weight", (A + "self_attn.o_proj.weight",), "row"),
        ParamRule(L + "pre_mlp_layernorm.weight", (A + "post_attention_layernorm.weight",)),
        ParamRule(L + M + "linear_fc1.weight", (A + "mlp.gate_proj.weight", A + "mlp.up_proj.weight"), "gate_up"),
        ParamRule(L + M + "linear_fc2.weight", (A + "mlp.down_proj.weight",), "row"),
        ParamRule("decoder.final_layernorm.weight", ("model.norm.weight",)),
        ParamRule("output_layer.weight",
                  ("model.embed_tokens.weight" if args.tie_embeddings else "lm_head.weight",), "column"),
    ]
    cfg = args.config
    return WeightMapping(rules, cfg.num_attention_heads, cfg.num_query_groups, cfg.kv_channels,
                         tied_embeddings=args.tie_embeddings)


def check_vocab(args: Qwen3Args, reader: HFCheckpointReader, hf_dir: str) -> None:
    """Embedding rows == config vocab_size >= the tokenizer's size (when a tokenizer.json is present)."""
    rows = reader.shape("model.embed_tokens.weight")[0]
    if rows != args.vocab_size:
        raise ValueError(f"{reader.key_to_file['model.embed_tokens.weight']}: model.embed_tokens.weight has {rows} "
                         f"rows but {os.path.join(hf_dir, 'config.json')} says vocab_size = {args.vocab_size}")
    tok_file = os.path.join(hf_dir, "tokenizer.json")
    if os.path.isfile(tok_file):
        from tokenizers import Tokenizer

        n = Tokenizer.from_file(tok_file).get_vocab_size(with_added_tokens=True)
        if n > args.vocab_size:
            raise ValueError(f"{tok_file}: the tokenizer has {n} ids but {os.path.join(hf_dir, 'config.json')} "
                             f"vocab_size is {args.vocab_size} (expected vocab_size >= tokenizer size)")


def _grid(tp: int, pp: int):
    from tide_megatron.distributed import ParallelLayout, build_model_grid

    return build_model_grid(ParallelLayout(tp=tp, pp=pp), name="convert")


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def build_model_for(args: Qwen3Args, pgs, backend: Optional[str] = None, parallel_output: bool = True):
    from tide_megatron.models.qwen3.model import build_qwen3_model

    return build_qwen3_model(args, pgs, backend=backend, parallel_output=parallel_output)


def _layer_offset(args: Qwen3Args, pp_rank: int) -> int:
    return pp_rank * (args.config.num_layers // args.config.pipeline_model_parallel_size)


def hf_to_mcore(hf_dir: str, out_dir: str, tp: int = 1, pp: int = 1, dtype: str = "float32",
                backend: Optional[str] = None) -> None:
    """Convert an HF Qwen3 directory into a megatron dist checkpoint written by a TP x PP layout.

    Collective over the world (which must have tp*pp*dp ranks); reads one megatron parameter's HF
    tensors at a time; `out_dir` appears only when complete.
    """
    from megatron.core import dist_checkpointing

    if dtype not in DTYPES:
        raise ValueError(f"--dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    args = qwen3_args_from_hf(hf_dir, tp=tp, pp=pp, params_dtype=DTYPES[dtype], perform_initialization=False)
    reader = HFCheckpointReader(hf_dir)
    check_vocab(args, reader, hf_dir)
    world = dist.get_world_size() if dist.is_initialized() else 1
    if world % (tp * pp):
        raise ValueError(f"--tp {tp} x --pp {pp} does not divide the number of ranks ({world})")
    grid = _grid(tp, pp)
    model = build_model_for(args, grid.pgs, backend)
    load_hf_into_model(model, reader, qwen3_mapping(args), grid.tp_rank, tp, _layer_offset(args, grid.pp_rank))
    reader.close()
    rank0 = not dist.is_initialized() or dist.get_rank() == 0
    with atomic_output_dir(out_dir, "--mcore-dir", is_writer=rank0, barrier=_barrier) as tmp:
        dist_checkpointing.save(sharded_state_dict(model), tmp)
        if rank0:
            copy_hf_assets(hf_dir, os.path.join(tmp, HF_ASSETS))
            with open(os.path.join(tmp, META_FILE), "w", encoding="utf-8") as fh:
                json.dump({"architecture": "qwen3", "tp": tp, "pp": pp, "dtype": dtype}, fh, indent=2)


def sharded_state_dict(model: torch.nn.Module) -> dict:
    """The model's sharded state dict on its own process groups (not megatron's global ones)."""
    return model.sharded_state_dict(metadata={"dp_cp_group": model.pg_collection.dp_cp})


def read_mcore_meta(mcore_dir: str) -> dict:
    """`tide_model.json` of a converted directory, with an error naming the file."""
    path = os.path.join(mcore_dir, META_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: missing (expected a directory written by tide-convert hf-to-mcore)")
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def qwen3_args_from_mcore(mcore_dir: str, tp: int = 1, pp: int = 1, dtype: Optional[str] = None,
                          **overrides) -> Qwen3Args:
    """Model arguments for loading `mcore_dir` at any TP/PP (dist checkpoints reshard on load)."""
    meta = read_mcore_meta(mcore_dir)
    dtype = dtype or meta.get("dtype", "float32")
    return qwen3_args_from_hf(read_hf_config(os.path.join(mcore_dir, HF_ASSETS)), tp=tp, pp=pp,
                              params_dtype=DTYPES[dtype],
                              source=os.path.join(mcore_dir, HF_ASSETS, "config.json"), **overrides)


def load_mcore_checkpoint(model: torch.nn.Module, mcore_dir: str) -> None:
    """Load a dist checkpoint into a built model (any TP/PP; megatron reshards)."""
    from megatron.core import dist_checkpointing

    read_mcore_meta(mcore_dir)
    state = dist_checkpointing.load(sharded_state_dict(model), mcore_dir)
    model.load_state_dict(state, strict=False)


def mcore_to_hf(mcore_dir: str, out_dir: str, dtype: Optional[str] = None,
                max_shard_bytes: int = 2 * 1024**3) -> None:
    """Convert a megatron dist checkpoint back to an HF Qwen3 directory (collective; rank 0 writes)."""
    args = qwen3_args_from_mcore(mcore_dir, perform_initialization=False)
    grid = _grid(1, 1)
    model = build_model_for(args, grid.pgs, backend="local")
    load_mcore_checkpoint(model, mcore_dir)
    rank0 = not dist.is_initialized() or dist.get_rank() == 0
    out_dtype = DTYPES[dtype] if dtype else None
    with atomic_output_dir(out_dir, "--hf-dir", is_writer=rank0, barrier=_barrier) as tmp:
        if rank0:
            copy_hf_assets(os.path.join(mcore_dir, HF_ASSETS), tmp)
            write_hf_safetensors(tmp, iter_hf_tensors(model, qwen3_mapping(args)), max_shard_bytes, out_dtype)


def verify(hf_dir: str, mcore_dir: str, seq_len: int = 16, batch: int = 2, block_size: int = 4,
           seed: int = 0, tp: Optional[int] = None, log: Callable[[str], None] = print) -> dict[str, float]:
    """Run transformers' own Qwen3 and the megatron model on the same random tokens and explicit 4-D masks.

    Masks: causal over `seq_len`, and block-diffusion over [xt ; x0] (2*seq_len, duplicated positions).
    Returns {mask name: max |logit difference|} (fp32). Collective; megatron runs at TP = `tp` (world).
    """
    from tide_megatron.diffusion.masks import block_diffusion_mask

    world = dist.get_world_size() if dist.is_initialized() else 1
    tp = tp or world
    args = qwen3_args_from_mcore(mcore_dir, tp=tp, dtype="float32", perform_initialization=False)
    grid = _grid(tp, 1)
    model = build_model_for(args, grid.pgs, backend="local", parallel_output=False)
    load_mcore_checkpoint(model, mcore_dir)
    model.eval()
    hf = load_hf_reference(hf_dir)

    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, args.vocab_size, (batch, seq_len), generator=gen)
    pos = torch.arange(seq_len).expand(batch, seq_len)
    causal = torch.ones(seq_len, seq_len, dtype=torch.bool).tril()
    ids2 = torch.cat([ids, torch.randint(0, args.vocab_size, (batch, seq_len), generator=gen)], dim=1)
    pos2 = pos.repeat(1, 2)
    cases = {"causal": (ids, pos, causal),
             "block_diffusion": (ids2, pos2, block_diffusion_mask(seq_len, block_size, "xt_x0"))}
    result = {}
    with torch.no_grad():
        for name, (x, p, allowed) in cases.items():
            ours = model(x, p, allowed).float()
            theirs = hf(input_ids=x, position_ids=p, attention_mask=hf_additive_mask(allowed, batch)).logits.float()
            result[name] = (ours - theirs).abs().max().item()
            log(f"{name}: max abs logit difference = {result[name]:.3e}")
    return result


def load_hf_reference(hf_dir: str) -> torch.nn.Module:
    """transformers' own model class for `hf_dir`, fp32, weights read with safetensors.

    Built with `from_config` and filled by hand because transformers 5's `from_pretrained` leaves
    non-persistent buffers (RoPE `inv_freq`) uninitialised when torch.distributed is initialised.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(hf_dir)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation="sdpa")
    reader = HFCheckpointReader(hf_dir)
    state = {k: reader.get(k).to(torch.float32) for k in reader.keys()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise ValueError(f"{hf_dir}: checkpoint does not match {type(model).__name__}: "
                         f"missing {missing[:5]}, unexpected {unexpected[:5]}")
    model.tie_weights()
    return model.eval()


def hf_additive_mask(allowed: torch.Tensor, batch: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The same explicit mask for transformers: a 4-D additive float mask (0 allowed, finfo.min blocked)."""
    m = torch.zeros(allowed.shape, dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min)
    return m[None, None].expand(batch, 1, *allowed.shape)

"""HF <-> megatron conversion operations, parameterised by an `Architecture` (spec: DESIGN §3).

An architecture bundles: HF config -> model args, the weight mapping, the model builder, and input
checks. `hf_to_mcore`, `mcore_to_hf`, `verify` and `load_mcore_checkpoint` work for any registered
architecture; `tide_megatron.models.registry` names them for the CLI.

Layout of a megatron directory written here: the dist checkpoint (torch_dist) at the root, plus
`tide_model.json` (architecture, TP/PP it was written at, dtype) and `hf/` (config.json, tokenizer and
other small files of the source HF directory, so the way back to HF is self-contained).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
import torch.distributed as dist

from tide_megatron.dtypes import DTYPES
from tide_megatron.models.conversion import (WeightMapping, atomic_output_dir, copy_hf_assets, iter_hf_tensors,
                                             load_hf_into_model, write_hf_safetensors)
from tide_megatron.models.safetensors_reader import SafetensorsReader

META_FILE = "tide_model.json"
HF_ASSETS = "hf"


def load_hf_reference(hf_dir: str) -> torch.nn.Module:
    """transformers' own model class for `hf_dir`, fp32, weights read with safetensors.

    Built with `from_config` and filled by hand because transformers 5's `from_pretrained` leaves
    non-persistent buffers (RoPE `inv_freq`) uninitialised when torch.distributed is initialised.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(hf_dir)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation="sdpa")
    reader = SafetensorsReader(hf_dir)
    state = {k: reader.get(k).to(torch.float32) for k in reader.keys()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not (k == "lm_head.weight" and getattr(config, "tie_word_embeddings", False))]
    if missing or unexpected:
        raise ValueError(f"{hf_dir}: checkpoint does not match {type(model).__name__}: "
                         f"missing {missing[:5]}, unexpected {unexpected[:5]}")
    model.tie_weights()
    return model.eval()


@dataclass(frozen=True)
class Architecture:
    """What the converter needs to know about one model family.

    args_from_hf(hf_config_dict_or_dir, tp=, pp=, params_dtype=, source=, **TransformerConfig overrides)
      -> an object with `.config` (TransformerConfig) and `.vocab_size`;
    mapping(args) -> WeightMapping; build_model(args, pgs, backend=, parallel_output=) -> megatron module
    taking (ids, position_ids, attention_mask[bool, True = may attend]); check_hf(args, reader, hf_dir)
    validates a source directory before anything is written; hf_reference(hf_dir) -> transformers model;
    expert_offset(args, grid) -> global index of this rank's first local expert (MoE under EP).
    """

    name: str
    args_from_hf: Callable[..., Any]
    mapping: Callable[[Any], WeightMapping]
    build_model: Callable[..., torch.nn.Module]
    check_hf: Callable[[Any, SafetensorsReader, str], None] = lambda args, reader, hf_dir: None
    hf_reference: Callable[[str], torch.nn.Module] = load_hf_reference
    expert_offset: Callable[[Any, Any], int] = lambda args, grid: 0


def _grid(tp: int, pp: int, ep: int = 1):
    from tide_megatron.distributed import ParallelLayout, build_model_grid

    return build_model_grid(ParallelLayout(tp=tp, pp=pp, ep=ep), name="convert")


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def _is_rank0() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def _layer_offset(config, pp_rank: int) -> int:
    from megatron.core.transformer.transformer_layer import get_transformer_layer_offset

    return get_transformer_layer_offset(config, pp_rank=pp_rank)


def sharded_state_dict(model: torch.nn.Module) -> dict:
    """The model's sharded state dict on its own process groups (not megatron's global ones)."""
    return model.sharded_state_dict(metadata={"dp_cp_group": model.pg_collection.dp_cp})


def hf_to_mcore(arch: Architecture, hf_dir: str, out_dir: str, tp: int = 1, pp: int = 1,
                dtype: str = "float32", backend: Optional[str] = None, ep: int = 1) -> None:
    """Convert an HF directory into a megatron dist checkpoint written by a TP x PP layout.

    Collective over the world (tp*pp must divide it); reads one megatron parameter's HF tensors at a
    time (memory-mapped shards); `out_dir` appears only when complete.
    """
    from megatron.core import dist_checkpointing

    if dtype not in DTYPES:
        raise ValueError(f"--dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    overrides = {"expert_model_parallel_size": ep} if ep > 1 else {}
    args = arch.args_from_hf(hf_dir, tp=tp, pp=pp, params_dtype=DTYPES[dtype], perform_initialization=False,
                             **overrides)
    reader = SafetensorsReader(hf_dir)
    arch.check_hf(args, reader, hf_dir)
    world = dist.get_world_size() if dist.is_initialized() else 1
    if world % (tp * pp):
        raise ValueError(f"--tp {tp} x --pp {pp} does not divide the number of ranks ({world})")
    grid = _grid(tp, pp, ep)
    model = arch.build_model(args, grid.pgs, backend=backend)
    load_hf_into_model(model, reader, arch.mapping(args), grid.tp_rank, tp,
                       layer_offset=_layer_offset(args.config, grid.pp_rank),
                       expert_offset=arch.expert_offset(args, grid))
    reader.close()
    with atomic_output_dir(out_dir, "--mcore-dir", is_writer=_is_rank0(), barrier=_barrier) as tmp:
        dist_checkpointing.save(sharded_state_dict(model), tmp)
        if _is_rank0():
            copy_hf_assets(hf_dir, os.path.join(tmp, HF_ASSETS))
            with open(os.path.join(tmp, META_FILE), "w", encoding="utf-8") as fh:
                json.dump({"architecture": arch.name, "tp": tp, "pp": pp, "ep": ep, "dtype": dtype}, fh, indent=2)


def read_mcore_meta(mcore_dir: str) -> dict:
    """`tide_model.json` of a converted directory, with an error naming the file."""
    path = os.path.join(mcore_dir, META_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: missing (expected a directory written by tide-convert hf-to-mcore)")
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def args_from_mcore(arch: Architecture, mcore_dir: str, tp: int = 1, pp: int = 1, dtype: Optional[str] = None,
                    **overrides: Any) -> Any:
    """Model arguments for loading `mcore_dir` at any TP/PP (dist checkpoints reshard on load)."""
    from tide_megatron.models.qwen3.config import read_hf_config

    meta = read_mcore_meta(mcore_dir)
    if meta.get("architecture") != arch.name:
        raise ValueError(f"{os.path.join(mcore_dir, META_FILE)}: architecture {meta.get('architecture')!r}, "
                         f"expected {arch.name!r}")
    assets = os.path.join(mcore_dir, HF_ASSETS)
    return arch.args_from_hf(read_hf_config(assets), tp=tp, pp=pp, params_dtype=DTYPES[dtype or meta["dtype"]],
                             source=os.path.join(assets, "config.json"), **overrides)


def load_mcore_checkpoint(model: torch.nn.Module, mcore_dir: str) -> None:
    """Load a dist checkpoint into a built model (any TP/PP; megatron reshards). Every parameter must load."""
    from megatron.core import dist_checkpointing

    read_mcore_meta(mcore_dir)
    model.load_state_dict(dist_checkpointing.load(sharded_state_dict(model), mcore_dir), strict=True)


def mcore_to_hf(arch: Architecture, mcore_dir: str, out_dir: str, dtype: Optional[str] = None,
                max_shard_bytes: int = 2 * 1024**3) -> None:
    """Convert a megatron dist checkpoint back to HF safetensors (collective; rank 0 writes).

    Loads the whole model unsharded (TP=1, PP=1) in each process, then writes HF-sized shards.
    """
    args = args_from_mcore(arch, mcore_dir, perform_initialization=False)
    model = arch.build_model(args, _grid(1, 1).pgs, backend="local")
    load_mcore_checkpoint(model, mcore_dir)
    out_dtype = DTYPES[dtype] if dtype else None
    with atomic_output_dir(out_dir, "--hf-dir", is_writer=_is_rank0(), barrier=_barrier) as tmp:
        if _is_rank0():
            copy_hf_assets(os.path.join(mcore_dir, HF_ASSETS), tmp)
            write_hf_safetensors(tmp, iter_hf_tensors(model, arch.mapping(args)), max_shard_bytes, out_dtype)


def hf_additive_mask(allowed: torch.Tensor, batch: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The same explicit mask for transformers: a 4-D additive float mask (0 allowed, finfo.min blocked)."""
    m = torch.zeros(allowed.shape, dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min)
    return m[None, None].expand(batch, 1, *allowed.shape)


def verify(arch: Architecture, hf_dir: str, mcore_dir: str, seq_len: int = 16, batch: int = 2,
           block_size: int = 4, seed: int = 0, tp: Optional[int] = None,
           log: Callable[[str], None] = print) -> dict[str, float]:
    """Run transformers' model and the megatron model on the same random tokens and explicit 4-D masks.

    Masks: causal over `seq_len`, and block-diffusion over [xt ; x0] (2*seq_len, duplicated positions).
    Returns {mask name: max |logit difference|} in fp32. Collective; megatron runs at TP = `tp` (default:
    the world size).
    """
    from tide_megatron.diffusion.masks import block_diffusion_mask

    tp = tp or (dist.get_world_size() if dist.is_initialized() else 1)
    args = args_from_mcore(arch, mcore_dir, tp=tp, dtype="float32", perform_initialization=False)
    model = arch.build_model(args, _grid(tp, 1).pgs, backend="local", parallel_output=False)
    load_mcore_checkpoint(model, mcore_dir)
    model.eval()
    hf = arch.hf_reference(hf_dir)

    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, args.vocab_size, (batch, seq_len), generator=gen)
    pos = torch.arange(seq_len).expand(batch, seq_len)
    causal = torch.ones(seq_len, seq_len, dtype=torch.bool).tril()
    ids2 = torch.cat([ids, torch.randint(0, args.vocab_size, (batch, seq_len), generator=gen)], dim=1)
    cases = {"causal": (ids, pos, causal),
             "block_diffusion": (ids2, pos.repeat(1, 2), block_diffusion_mask(seq_len, block_size, "xt_x0"))}
    result = {}
    with torch.no_grad():
        for name, (x, p, allowed) in cases.items():
            ours = model(x, p, allowed).float()
            theirs = hf(input_ids=x, position_ids=p, attention_mask=hf_additive_mask(allowed, batch)).logits.float()
            result[name] = (ours - theirs).abs().max().item()
            log(f"{name}: max abs logit difference = {result[name]:.3e}")
    return result

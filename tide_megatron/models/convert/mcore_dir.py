"""HF directory <-> megatron-core dist-checkpoint directory, for any registered `Architecture`.

A directory written by `hf_to_mcore` holds the dist checkpoint (torch_dist) at its root, `tide_model.json`
(architecture, the TP/PP/EP it was written at, dtype) and `hf/` (config.json, tokenizer, modeling code and
other small files of the source, so the way back to HF is self-contained). A dist checkpoint reshards on
load: it loads at any TP/PP/EP, on either backend (unfused specs save their norms under the fused names).
"""

from __future__ import annotations

import json
import os
from typing import Any, Optional

import torch
import torch.distributed as dist

from tide_megatron.distributed import ParallelLayout, build_model_grid, checkpoint_io
from tide_megatron.dtypes import DTYPES
from tide_megatron.models.convert.architecture import Architecture
from tide_megatron.models.convert.hf_files import copy_hf_assets, read_hf_config, write_hf_safetensors
from tide_megatron.models.convert.output_dir import atomic_output_dir, check_output_dir
from tide_megatron.models.convert.weights import hf_tensors
from tide_megatron.models.safetensors_reader import SafetensorsReader

META_FILE = "tide_model.json"
HF_ASSETS = "hf"


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def _is_rank0() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def _world() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def check_dtype(dtype: str, flag: str = "--dtype") -> torch.dtype:
    """The torch dtype of a `--dtype` value, with an error naming the flag."""
    if dtype not in DTYPES:
        raise ValueError(f"{flag} must be one of {sorted(DTYPES)}, got {dtype!r}")
    return DTYPES[dtype]


def sharded_state_dict(model: torch.nn.Module) -> dict:
    """The model's sharded state dict on its own process groups (not megatron's global ones)."""
    return model.sharded_state_dict(metadata={"dp_cp_group": model.pg_collection.dp_cp})


def is_mcore_dir(path: str) -> bool:
    """A directory written by `tide-convert hf-to-mcore` (it has the metadata file)."""
    return os.path.isfile(os.path.join(path, META_FILE))


def read_mcore_meta(mcore_dir: str, arch: Optional[Architecture] = None) -> dict:
    """`tide_model.json` of a converted directory (checked against `arch` when given); errors name the file."""
    path = os.path.join(mcore_dir, META_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: missing (expected a directory written by tide-convert hf-to-mcore)")
    with open(path, encoding="utf-8") as fh:
        meta = json.load(fh)
    if arch is not None and meta.get("architecture") != arch.name:
        raise ValueError(f"{path}: architecture {meta.get('architecture')!r}, expected {arch.name!r}")
    return meta


def hf_to_mcore(arch: Architecture, hf_dir: str, out_dir: str, tp: int = 1, pp: int = 1, ep: int = 1,
                dtype: str = "float32", backend: Optional[str] = None) -> None:
    """Convert an HF directory into a megatron dist checkpoint written by a TP x PP x EP layout.

    Collective over the world (the layout must divide it). Each rank reads only its slices of the HF
    tensors; every HF tensor must be used by some rank; `out_dir` appears only when complete.
    """
    params_dtype = check_dtype(dtype)
    check_output_dir(os.path.abspath(out_dir), "--mcore-dir")
    arch.args_from_hf(hf_dir, tp=tp, pp=pp, ep=ep, params_dtype=params_dtype)  # config and layout errors first
    if _world() % (tp * pp):
        raise ValueError(f"--tp {tp} x --pp {pp} does not divide the number of ranks ({_world()})")
    with build_model_grid(ParallelLayout(tp=tp, pp=pp, ep=ep), name="convert") as grid:
        model, args, used = arch.build_from_hf(hf_dir, grid.pgs, params_dtype, backend=backend)
        _check_every_tensor_used(arch, args, hf_dir, used)
        with atomic_output_dir(out_dir, "--mcore-dir", is_writer=_is_rank0(), barrier=_barrier) as tmp:
            checkpoint_io.save(sharded_state_dict(model), tmp)
            if _is_rank0():
                copy_hf_assets(hf_dir, os.path.join(tmp, HF_ASSETS))
                with open(os.path.join(tmp, META_FILE), "w", encoding="utf-8") as fh:
                    json.dump({"architecture": arch.name, "tp": tp, "pp": pp, "ep": ep, "dtype": dtype}, fh, indent=2)


def _check_every_tensor_used(arch: Architecture, args: Any, hf_dir: str, used: set[str]) -> None:
    """No HF tensor is silently dropped: the union over ranks of the names read covers the checkpoint."""
    everyone = [used]
    if dist.is_initialized():
        everyone = [None] * dist.get_world_size()
        dist.all_gather_object(everyone, used)
    reader = SafetensorsReader(hf_dir)
    unused = sorted(k for k in set(reader.keys()) - set().union(*everyone) if not arch.mapping(args).may_skip(k))
    reader.close()
    if unused:
        raise ValueError(f"{hf_dir}: {len(unused)} tensor(s) have no place in the {arch.name} model its config.json "
                         f"describes, e.g. {unused[:4]}")


def args_from_mcore(arch: Architecture, mcore_dir: str, tp: int = 1, pp: int = 1, ep: int = 1,
                    dtype: Optional[str] = None, **overrides: Any) -> Any:
    """Model arguments for loading `mcore_dir` at any TP/PP/EP (default dtype: the one it was written in)."""
    meta = read_mcore_meta(mcore_dir, arch)
    assets = os.path.join(mcore_dir, HF_ASSETS)
    return arch.args_from_hf(read_hf_config(assets), tp=tp, pp=pp, ep=ep,
                             params_dtype=check_dtype(dtype or meta["dtype"]),
                             source=os.path.join(assets, "config.json"), **overrides)


def load_mcore_checkpoint(model: torch.nn.Module, mcore_dir: str) -> None:
    """Load a dist checkpoint into a built model (any layout; megatron reshards). Every tensor must load."""
    read_mcore_meta(mcore_dir)
    model.load_state_dict(checkpoint_io.load(sharded_state_dict(model), mcore_dir), strict=True)


def mcore_to_hf(arch: Architecture, mcore_dir: str, out_dir: str, dtype: Optional[str] = None,
                max_shard_bytes: int = 2 * 1024**3) -> None:
    """Convert a megatron dist checkpoint back to HF safetensors (collective; rank 0 writes).

    Every process loads the whole model unsharded (TP = PP = EP = 1), then rank 0 writes HF-sized shards
    through the architecture's mapping (the inverse of `hf_to_mcore`).
    """
    out_dtype = check_dtype(dtype) if dtype else None
    check_output_dir(os.path.abspath(out_dir), "--hf-dir")
    args = args_from_mcore(arch, mcore_dir)
    with build_model_grid(ParallelLayout(), name="convert") as grid:
        model = arch.build_model(args, grid.pgs, backend="local")
        load_mcore_checkpoint(model, mcore_dir)
        with atomic_output_dir(out_dir, "--hf-dir", is_writer=_is_rank0(), barrier=_barrier) as tmp:
            if _is_rank0():
                copy_hf_assets(os.path.join(mcore_dir, HF_ASSETS), tmp)
                write_hf_safetensors(tmp, hf_tensors(model, arch.mapping(args)), max_shard_bytes, out_dtype)

"""The files of a Hugging Face checkpoint directory: config.json read, safetensors shards + index and the small
files written."""

from __future__ import annotations

import json
import os
import shutil
from typing import Any, Iterable, Optional, Union

import torch
from safetensors.torch import save_file

from tide_megatron.models.safetensors_reader import INDEX_NAME

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".distcp")


def read_hf_config(path: Union[str, os.PathLike]) -> dict[str, Any]:
    """Load `config.json` (a directory or the file itself) with an error naming the file."""
    file = os.path.join(path, "config.json") if os.path.isdir(path) else str(path)
    if not os.path.isfile(file):
        raise FileNotFoundError(f"{file}: no config.json (expected a Hugging Face model directory)")
    try:
        with open(file, encoding="utf-8") as fh:
            return json.load(fh)
    except json.JSONDecodeError as err:
        raise ValueError(f"{file}: not valid JSON ({err})") from err


def write_hf_safetensors(out_dir: str, tensors: Iterable[tuple[str, torch.Tensor]],
                         max_shard_bytes: int = 2 * 1024**3, dtype: Optional[torch.dtype] = None) -> None:
    """Write shards of at most `max_shard_bytes` plus `model.safetensors.index.json`.

    Shard names follow transformers: `model-0000k-of-0000n.safetensors`, or `model.safetensors` when one
    shard holds everything; the index is always written. Tensors are consumed one by one, so at most one
    shard is in memory.
    """
    shard: dict[str, torch.Tensor] = {}
    files: list[str] = []
    weight_map: dict[str, str] = {}
    size = total = 0

    def flush() -> None:
        files.append(f"part-{len(files) + 1:05d}.safetensors")
        weight_map.update({key: files[-1] for key in shard})
        save_file(shard, os.path.join(out_dir, files[-1]), metadata={"format": "pt"})
        shard.clear()

    for name, tensor in tensors:
        tensor = (tensor.to(dtype) if dtype is not None else tensor).contiguous()
        nbytes = tensor.numel() * tensor.element_size()
        if shard and size + nbytes > max_shard_bytes:
            flush()
            size = 0
        shard[name] = tensor
        size += nbytes
        total += nbytes
    if shard or not files:
        flush()
    n = len(files)
    final = {f: ("model.safetensors" if n == 1 else f"model-{i + 1:05d}-of-{n:05d}.safetensors")
             for i, f in enumerate(files)}
    for f, name in final.items():
        os.replace(os.path.join(out_dir, f), os.path.join(out_dir, name))
    index = {"metadata": {"total_size": total}, "weight_map": {k: final[v] for k, v in weight_map.items()}}
    with open(os.path.join(out_dir, INDEX_NAME), "w", encoding="utf-8") as fh:
        json.dump(index, fh, indent=2, sort_keys=True)


def copy_hf_assets(src_dir: str, dst_dir: str) -> None:
    """Copy the small non-weight files (config, tokenizer, generation config, modeling code) of a model directory."""
    os.makedirs(dst_dir, exist_ok=True)
    for name in sorted(os.listdir(src_dir)):
        path = os.path.join(src_dir, name)
        if os.path.isfile(path) and not name.endswith(WEIGHT_SUFFIXES) and name != INDEX_NAME:
            shutil.copy2(path, os.path.join(dst_dir, name))

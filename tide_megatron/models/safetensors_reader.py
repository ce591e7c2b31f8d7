"""Lazy, sliced reads from a Hugging Face safetensors checkpoint directory (one reader for every converter).

A large checkpoint never sits whole in one process: each request opens (memory-maps) the shard that holds
the key, found through model.safetensors.index.json or, without an index, by scanning the *.safetensors
files, and reads the whole tensor or just the rows/columns a rank needs. Every error names the file, the
tensor and what it was needed for.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Union

import torch
from safetensors import safe_open

INDEX_NAME = "model.safetensors.index.json"


class CheckpointError(ValueError):
    """A checkpoint file is missing, lacks a tensor, or holds a tensor of the wrong shape."""


class CheckpointFileMissing(CheckpointError, FileNotFoundError):
    """The directory has no safetensors files, or its index lists shards that do not exist."""


def _open_shard(file: Path):
    """`safe_open` with an error naming the shard when it is truncated or not a safetensors file."""
    try:
        return safe_open(str(file), framework="pt")
    except Exception as err:  # safetensors' SafetensorError: "incomplete metadata, file not fully covered", ...
        raise CheckpointError(f"{file}: not a readable safetensors file ({err}; {file.stat().st_size} bytes: "
                              f"truncated or corrupt? download it again)") from None


class SafetensorsReader:
    """Key → shard lookup plus whole or sliced reads; open shard handles are cached until `close`."""

    def __init__(self, directory: Union[str, Path]):
        self.directory = Path(directory)
        index = self.directory / INDEX_NAME
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map")
            except (json.JSONDecodeError, AttributeError) as err:
                raise CheckpointError(f"{index}: not a JSON object with a 'weight_map' ({err})") from None
            if not isinstance(weight_map, dict):
                raise CheckpointError(f"{index}: no 'weight_map' object")
            self.key_to_file = {k: self.directory / v for k, v in weight_map.items()}
            missing = sorted({str(f.name) for f in self.key_to_file.values() if not f.is_file()})
            if missing:
                raise CheckpointFileMissing(f"{index} lists shard(s) that do not exist: {', '.join(missing)}")
        else:
            files = sorted(self.directory.glob("*.safetensors"))
            if not files:
                raise CheckpointFileMissing(f"{self.directory}: no *.safetensors files and no {INDEX_NAME}")
            self.key_to_file = {}
            for file in files:
                with _open_shard(file) as handle:
                    for key in handle.keys():
                        if key in self.key_to_file:
                            raise CheckpointError(f"{self.directory}: tensor '{key}' is in both "
                                                  f"{self.key_to_file[key].name} and {file.name} (no {INDEX_NAME} "
                                                  f"to say which one is meant)")
                        self.key_to_file[key] = file
        self._handles: dict[Path, object] = {}

    @property
    def hf_dir(self) -> str:
        """The checkpoint directory as a string (for messages)."""
        return str(self.directory)

    def keys(self) -> list[str]:
        return list(self.key_to_file)

    def __contains__(self, key: str) -> bool:
        return key in self.key_to_file

    def _handle(self, key: str, purpose: str):
        if key not in self.key_to_file:
            raise CheckpointError(f"{self.directory}: tensor '{key}' is missing (needed for {purpose})")
        file = self.key_to_file[key]
        if file not in self._handles:
            if not file.is_file():
                raise CheckpointFileMissing(f"{file}: shard holding '{key}' does not exist (needed for {purpose})")
            self._handles[file] = _open_shard(file)
        return self._handles[file]

    def shape(self, key: str, purpose: str = "shape check") -> tuple[int, ...]:
        """A tensor's shape without reading its data."""
        return tuple(self._handle(key, purpose).get_slice(key).get_shape())

    def get(self, key: str, purpose: str = "loading") -> torch.Tensor:
        """One whole tensor, read from its (memory-mapped) shard."""
        return self._handle(key, purpose).get_tensor(key)

    def read(self, key: str, purpose: str, rows: Optional[slice] = None, cols: Optional[slice] = None,
             expect_shape: Optional[tuple[int, ...]] = None) -> torch.Tensor:
        """Read ``key`` (optionally rows/cols of a 2-D tensor), checking its full shape first."""
        view = self._handle(key, purpose).get_slice(key)
        shape = tuple(view.get_shape())
        if expect_shape is not None and shape != tuple(expect_shape):
            raise CheckpointError(f"{self.key_to_file[key]}: tensor '{key}' has shape {shape}, expected "
                                  f"{tuple(expect_shape)} (for {purpose})")
        if rows is None and cols is None:
            return view[:]
        if cols is None:
            return view[rows]
        return view[rows if rows is not None else slice(None), cols]

    def close(self) -> None:
        self._handles.clear()

"""Streamed reads from a Hugging Face safetensors checkpoint: only the rows/columns a rank needs.

A 16B checkpoint never sits whole in one process: each request opens the shard that holds the key
(through model.safetensors.index.json when present) and reads just the requested slice.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import torch
from safetensors import safe_open


class CheckpointError(ValueError):
    """A checkpoint file is missing, lacks a tensor, or holds a tensor of the wrong shape."""


class SafetensorsReader:
    """Key → shard lookup plus sliced reads; open shard handles are cached."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        index = self.directory / "model.safetensors.index.json"
        if index.is_file():
            weight_map = json.loads(index.read_text()).get("weight_map")
            if not isinstance(weight_map, dict):
                raise CheckpointError(f"{index}: no 'weight_map' object")
            self.key_to_file = {k: self.directory / v for k, v in weight_map.items()}
        else:
            files = sorted(self.directory.glob("*.safetensors"))
            if not files:
                raise CheckpointError(f"{self.directory}: no *.safetensors files and no model.safetensors.index.json")
            self.key_to_file = {}
            for file in files:
                with safe_open(str(file), framework="pt") as handle:
                    self.key_to_file.update({k: file for k in handle.keys()})
        self._handles: dict[Path, object] = {}

    def __contains__(self, key: str) -> bool:
        return key in self.key_to_file

    def _handle(self, key: str, purpose: str):
        if key not in self.key_to_file:
            raise CheckpointError(f"{self.directory}: tensor '{key}' is missing (needed for {purpose})")
        file = self.key_to_file[key]
        if file not in self._handles:
            if not file.is_file():
                raise CheckpointError(f"{file}: shard listed in the index for '{key}' does not exist")
            self._handles[file] = safe_open(str(file), framework="pt")
        return self._handles[file]

    def shape(self, key: str, purpose: str = "shape check") -> tuple[int, ...]:
        return tuple(self._handle(key, purpose).get_slice(key).get_shape())

    def read(self, key: str, purpose: str, rows: Optional[slice] = None, cols: Optional[slice] = None,
             expect_shape: Optional[tuple[int, ...]] = None) -> torch.Tensor:
        """Read ``key`` (optionally rows/cols of a 2-D tensor), checking its full shape first."""
        handle = self._handle(key, purpose)
        view = handle.get_slice(key)
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

"""Architectures known to tide-convert, by name -> "module:attribute" of an `Architecture` (lazy imports)."""

from __future__ import annotations

import importlib

from tide_megatron.models.converter import Architecture

ARCHITECTURES: dict[str, str] = {
    "qwen3": "tide_megatron.models.qwen3.convert:QWEN3",
}


def get_architecture(name: str) -> Architecture:
    """The registered `Architecture` called `name`; a clear error naming --arch otherwise."""
    if name not in ARCHITECTURES:
        raise ValueError(f"--arch {name!r} is unknown; expected one of {sorted(ARCHITECTURES)}")
    module, attr = ARCHITECTURES[name].split(":")
    return getattr(importlib.import_module(module), attr)

"""The model families `tide-convert --arch` and the loaders know, by name: one `Architecture` each."""

from __future__ import annotations

from tide_megatron.models.convert.architecture import Architecture
from tide_megatron.models.llada2.convert import LLADA2
from tide_megatron.models.qwen3.convert import QWEN3, WEDLM

ARCHITECTURES: dict[str, Architecture] = {arch.name: arch for arch in (QWEN3, WEDLM, LLADA2)}


def get_architecture(name: str) -> Architecture:
    """The registered `Architecture` called `name`; a clear error naming --arch otherwise."""
    if name not in ARCHITECTURES:
        raise ValueError(f"--arch {name!r} is unknown; expected one of {sorted(ARCHITECTURES)}")
    return ARCHITECTURES[name]

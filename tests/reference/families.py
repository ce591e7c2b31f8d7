"""A tiny random HF checkpoint of each registered model family, by family name (for tests only)."""

from __future__ import annotations

from pathlib import Path
from typing import Union

from tests.reference.llada2_checkpoint import write_tiny_llada2
from tests.reference.wedlm_checkpoint import write_tiny_wedlm
from tide_megatron.models.qwen3.tiny import save_tiny_qwen3

FAMILIES = ("qwen3", "wedlm", "llada2")
#: `verify` flags per family: only LLaDA2's reference is the checkpoint's own modeling code
VERIFY_FLAGS = {"qwen3": [], "wedlm": [], "llada2": ["--trust-remote-code"]}


def write_family(arch: str, directory: Union[str, Path], seed: int = 5) -> str:
    """Qwen3: transformers' Qwen3ForCausalLM (untied, sharded); WeDLM: Qwen3 weights with WeDLM's config;
    LLaDA2: the plain reference MoE with its own modeling file (the published mask handling)."""
    directory = str(directory)
    if arch == "qwen3":
        save_tiny_qwen3(directory, seed=seed, tie_word_embeddings=False, max_shard_size="40KB")
    elif arch == "wedlm":
        write_tiny_wedlm(Path(directory), seed=seed)
    elif arch == "llada2":
        write_tiny_llada2(Path(directory), seed=seed)
    else:
        raise ValueError(f"unknown family {arch!r}; expected one of {FAMILIES}")
    return directory

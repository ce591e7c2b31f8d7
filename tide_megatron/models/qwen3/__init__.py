"""Qwen3 (student; also WeDLM's layout) as a megatron-core GPTModel, with HF conversion."""

from tide_megatron.models.qwen3.config import Qwen3Args, qwen3_args_from_hf
from tide_megatron.models.qwen3.model import build_qwen3_model

__all__ = ["Qwen3Args", "qwen3_args_from_hf", "build_qwen3_model"]

"""LLaDA2.0-mini MoE teacher on megatron-core (§2.1): HF config mapping, layer specs, model, HF conversion."""

from tide_megatron.models.llada2.config import LLaDA2Config, LLaDA2ConfigError, UnsupportedRouterSetting
from tide_megatron.models.llada2.convert import LLADA2, load_llada2_teacher
from tide_megatron.models.llada2.model import build_llada2_model, forward_llada2
from tide_megatron.models.safetensors_reader import CheckpointError

__all__ = ["CheckpointError", "LLADA2", "LLaDA2Config", "LLaDA2ConfigError", "UnsupportedRouterSetting",
           "build_llada2_model", "forward_llada2", "load_llada2_teacher"]

"""FP8 for the student through Transformer Engine (GPU only; DESIGN §2).

`fp8_settings(cfg)` returns the `TransformerConfig` fields that turn on megatron-core's TE FP8 path
(TE layer spec required); `check_fp8_available(cfg)` refuses FP8 with one clear message when there is
no CUDA device or no Transformer Engine, before any model is built.
"""

from __future__ import annotations

import importlib.util

import torch

from tide_megatron.config import ConfigError, PrecisionConfig


def transformer_engine_available() -> bool:
    """True when `transformer_engine.pytorch` can be imported (never on CPU-only installs)."""
    if importlib.util.find_spec("transformer_engine") is None:
        return False
    try:
        import transformer_engine.pytorch  # noqa: F401
    except Exception:  # the meta package without a backend raises RuntimeError, not ImportError
        return False
    return True


def check_fp8_available(cfg: PrecisionConfig) -> None:
    """Raise `ConfigError` naming ``precision.fp8`` when FP8 cannot run here."""
    if not cfg.fp8:
        return
    if not torch.cuda.is_available():
        raise ConfigError("precision.fp8: FP8 needs a CUDA GPU with Transformer Engine; this machine has no CUDA "
                          "device. Set precision.fp8=false (bf16/fp32 run on CPU)")
    if not transformer_engine_available():
        raise ConfigError("precision.fp8: Transformer Engine is not installed (pip install -e '.[gpu]'); "
                          "set precision.fp8=false to train in bf16")
    major, minor = torch.cuda.get_device_capability()
    if (major, minor) < (8, 9):
        raise ConfigError(f"precision.fp8: FP8 tensor cores need compute capability >= 8.9 (Ada/Hopper); this GPU "
                          f"is {major}.{minor}")


def fp8_settings(cfg: PrecisionConfig) -> dict:
    """`TransformerConfig` keyword arguments for FP8 (empty when FP8 is off)."""
    if not cfg.fp8:
        return {}
    check_fp8_available(cfg)
    return {
        "fp8": cfg.fp8_format,  # "hybrid" (E4M3 fwd / E5M2 bwd) or "e4m3"
        "fp8_recipe": cfg.fp8_recipe,
        "fp8_amax_history_len": cfg.fp8_amax_history_len,
        "fp8_amax_compute_algo": cfg.fp8_amax_compute_algo,
        "fp8_param": False,
    }


def apply_fp8(transformer_config, cfg: PrecisionConfig):
    """Set the FP8 fields on an existing `TransformerConfig` (the student's) and return it."""
    for key, value in fp8_settings(cfg).items():
        setattr(transformer_config, key, value)
    return transformer_config

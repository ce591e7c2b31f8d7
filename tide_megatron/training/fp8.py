"""FP8 for the student through Transformer Engine (GPU only; DESIGN §2).

`fp8_settings(cfg)` returns the `TransformerConfig` fields that turn on megatron-core's TE FP8 path
(TE layer spec required); `check_fp8_available(cfg)` refuses FP8 with one clear message when this GPU or
TE cannot run it, before any model is built; `use_amax_reduction_group(config, group)` makes the student's
FP8 amax reduction run over its own group instead of the whole world.
"""

from __future__ import annotations

import contextlib
import weakref
from typing import Callable, Optional

import torch
import torch.distributed as dist
from megatron.core import fp8_utils, parallel_state
from megatron.core.transformer import transformer_block
from packaging.version import Version

from tide_megatron.config import ConfigError, PrecisionConfig
from tide_megatron.models.transformer_engine import TEStatus, transformer_engine_status

#: Minimum Transformer Engine per recipe, as megatron-core 0.16.1's `fp8_utils.get_fp8_recipe` gates them.
RECIPE_MIN_TE = {"delayed": "1.0.0", "tensorwise": "2.2.0.dev0"}


def _te_fp8_support() -> tuple[bool, str]:
    """TE's own verdict for this GPU (``check_fp8_support``), or the compute-capability rule if TE has none."""
    try:
        from transformer_engine.pytorch.fp8 import check_fp8_support  # local: TE is optional (GPU installs only)

        return check_fp8_support()
    except ImportError:
        major, minor = torch.cuda.get_device_capability()
        if (major, minor) < (8, 9):
            return False, f"FP8 tensor cores need compute capability >= 8.9 (Ada/Hopper); this GPU is {major}.{minor}"
        return True, ""


def check_fp8_available(cfg: PrecisionConfig, cuda_available: Optional[bool] = None, te: Optional[TEStatus] = None,
                        fp8_support: Optional[Callable[[], tuple[bool, str]]] = None) -> None:
    """Raise `ConfigError` naming ``precision.fp8`` when FP8 cannot run here (no CUDA, no usable TE, a TE too
    old for the recipe, a GPU without FP8). The machine facts default to this machine's."""
    if not cfg.fp8:
        return
    if not (torch.cuda.is_available() if cuda_available is None else cuda_available):
        raise ConfigError("precision.fp8: FP8 needs a CUDA GPU with Transformer Engine; this machine has no CUDA "
                          "device. Set precision.fp8=false (bf16/fp32 run on CPU)")
    status = te or transformer_engine_status()
    if not status.usable:
        raise ConfigError(f"precision.fp8: Transformer Engine is not usable ({status.reason}); install it with "
                          "pip install -e '.[gpu]', or set precision.fp8=false to train in bf16")
    minimum = RECIPE_MIN_TE[cfg.fp8_recipe]
    if status.version is None or Version(status.version) < Version(minimum):
        raise ConfigError(f"precision.fp8_recipe={cfg.fp8_recipe!r} needs Transformer Engine >= {minimum}; this is "
                          f"{status.version}. Upgrade TE (pip install -e '.[gpu]') or use precision.fp8_recipe=delayed")
    ok, reason = (fp8_support or _te_fp8_support)()
    if not ok:
        raise ConfigError(f"precision.fp8: this GPU cannot run FP8 ({reason}); set precision.fp8=false")


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


# ------------------------------------------------------------------------------------------------------
# The FP8 amax-reduction group
# ------------------------------------------------------------------------------------------------------
# megatron-core 0.16.1 builds every FP8 context in `fp8_utils.get_fp8_context(config, ...)` and takes its
# amax-reduction group from the global `parallel_state` (None when it is not initialised, and Transformer
# Engine then reduces over the whole world). Our models carry their own process groups and never initialise
# parallel_state, so the student's TransformerConfig is registered here with its group, and megatron's
# `get_fp8_context` (as `transformer_block` and `fp8_utils` see it) answers from that registration.

_AMAX_GROUPS: dict[int, tuple[dist.ProcessGroup, dist.ProcessGroup]] = {}


def use_amax_reduction_group(config, group: dist.ProcessGroup, tp_group: Optional[dist.ProcessGroup] = None) -> None:
    """FP8 contexts built for ``config`` reduce amaxes over ``group`` (the student's tp x dp group; mcore's
    ``tp_only_amax_red`` picks ``tp_group``). Lasts as long as ``config``."""
    key = id(config)
    _AMAX_GROUPS[key] = (group, tp_group or group)
    weakref.finalize(config, _AMAX_GROUPS.pop, key, None)
    _install_fp8_context_hook()


def amax_reduction_group(config) -> Optional[dist.ProcessGroup]:
    """The group registered for ``config`` (None: megatron's default)."""
    groups = _AMAX_GROUPS.get(id(config))
    if groups is None:
        return None
    return groups[1] if getattr(config, "tp_only_amax_red", False) else groups[0]


@contextlib.contextmanager
def _parallel_state_answers(group: dist.ProcessGroup):
    """For the duration of building one FP8 context: the two parallel_state questions megatron asks."""
    saved = parallel_state.model_parallel_is_initialized, parallel_state.get_amax_reduction_group
    parallel_state.model_parallel_is_initialized = lambda: True
    parallel_state.get_amax_reduction_group = lambda with_context_parallel=False, tp_only_amax_red=False: group
    try:
        yield
    finally:
        parallel_state.model_parallel_is_initialized, parallel_state.get_amax_reduction_group = saved


def fp8_context_with_registered_group(original: Callable) -> Callable:
    """Wrap megatron's ``get_fp8_context``: a registered config gets its own amax group, others megatron's."""

    def get_fp8_context(config, layer_no: int = -1, is_init: bool = False):
        group = amax_reduction_group(config)
        if group is None:
            return original(config, layer_no, is_init)
        with _parallel_state_answers(group):
            return original(config, layer_no, is_init)

    get_fp8_context.tide_original = original
    return get_fp8_context


def _install_fp8_context_hook() -> None:
    """Idempotent: route megatron's FP8 contexts through `fp8_context_with_registered_group`."""
    for module in (fp8_utils, transformer_block):
        if not hasattr(module.get_fp8_context, "tide_original"):
            module.get_fp8_context = fp8_context_with_registered_group(module.get_fp8_context)

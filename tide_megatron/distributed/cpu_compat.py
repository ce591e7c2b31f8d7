"""Make megatron-core 0.16.1 run on CPU (gloo) by redirecting its hard-coded CUDA calls.

megatron-core assumes CUDA in about fifty places (device="cuda" factories, torch.cuda RNG and
streams, ``Tensor.type()`` checks for ``torch.cuda.FloatTensor``). On a CPU-only host, `apply()`
rebinds those to CPU equivalents so the *unmodified* megatron-core code paths (TP layers,
schedules, DDP, optimizers, MoE dispatchers, dist_checkpointing) run with gloo.

When CUDA is present, `apply()` only binds one name that mcore 0.16.1 forgets to define without
Transformer Engine (``moe_utils.te_general_gemm``) and returns False: GPU runs are untouched.
Everything is reversible with `remove()`.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from typing import Any, Callable

import torch
from megatron.core.tensor_parallel import layers as mcore_layers
from megatron.core.tensor_parallel import random as mcore_random
from megatron.core.transformer.moe import moe_utils, token_dispatcher

_SAVED: dict[tuple[Any, str], Any] = {}
_APPLIED = False

_CUDA_TYPE_NAMES = {
    torch.float32: "torch.cuda.FloatTensor",
    torch.float16: "torch.cuda.HalfTensor",
    torch.bfloat16: "torch.cuda.BFloat16Tensor",
    torch.float64: "torch.cuda.DoubleTensor",
    torch.int64: "torch.cuda.LongTensor",
    torch.int32: "torch.cuda.IntTensor",
    torch.uint8: "torch.cuda.ByteTensor",
    torch.bool: "torch.cuda.BoolTensor",
}


def _patch(owner: Any, name: str, value: Any) -> None:
    """Replace ``owner.name`` with ``value``, remembering the original once."""
    key = (owner, name)
    if key not in _SAVED:
        _SAVED[key] = getattr(owner, name, _MISSING)
    setattr(owner, name, value)


class _Missing:
    pass


_MISSING = _Missing()


def _is_cuda_device(device: Any) -> bool:
    if device is None:
        return False
    if isinstance(device, int):
        return True  # a bare integer means a CUDA ordinal to torch
    if isinstance(device, torch.device):
        return device.type == "cuda"
    if isinstance(device, str):
        return device.startswith("cuda")
    return False


def _cpu_factory(fn: Callable) -> Callable:
    """Wrap a tensor factory so CUDA devices become CPU and pinning is dropped."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if _is_cuda_device(kwargs.get("device")):
            kwargs["device"] = "cpu"
        kwargs.pop("pin_memory", None)
        return fn(*args, **kwargs)

    wrapper.__tide_cpu_compat__ = True
    return wrapper


class _InertStream:
    """Stands in for torch.cuda.Stream/Event: every method is a no-op returning another inert object."""

    def __init__(self, *args, **kwargs):
        pass

    def __getattr__(self, name):
        return lambda *a, **k: self  # e.g. stream.record_event() must yield an object with .synchronize()

    def __eq__(self, other):
        return isinstance(other, _InertStream)

    def __hash__(self):
        return 0


_INERT_STREAM = _InertStream()


def _tensor_type(self: torch.Tensor, *args, **kwargs):
    """`Tensor.type()` with no argument reports CUDA type names, as mcore's optimizer checks expect."""
    if args or kwargs:
        return _SAVED[(torch.Tensor, "type")](self, *args, **kwargs)
    name = _CUDA_TYPE_NAMES.get(self.dtype)
    return name if name is not None else _SAVED[(torch.Tensor, "type")](self)


def _cpu_get_rng_state(device: Any = "cuda") -> torch.Tensor:
    return torch.get_rng_state()


def _cpu_set_rng_state(new_state: torch.Tensor, device: Any = -1, graph_safe: bool = False) -> None:
    torch.set_rng_state(new_state)


def _cpu_get_cuda_rng_state(device: Any = "cuda", clone: bool = False, graph_safe: bool = False):
    state = torch.get_rng_state()
    return state.clone() if clone else state


class _DropForkWarning(logging.Filter):
    """With one (CPU) generator, every RNG-tracker fork 'changes the CPU state'; that is expected."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "CPU RNG state changed within GPU RNG context" not in record.getMessage()


def _maybe_move_tensor_to_cpu(tensor, as_numpy: bool = False, record_stream: bool = False):
    """mcore only converts split sizes to numpy for CUDA tensors; gloo needs lists on CPU too."""
    if torch.is_tensor(tensor):
        tensor = tensor.to("cpu")
        if as_numpy:
            return tensor.numpy()
    return tensor


class _CpuWgradAccumulation:
    """CPU stand-in for apex's ``fused_weight_gradient_mlp_cuda``: ``main_grad += grad_output^T @ input`` in place
    (2-D operands, as megatron's linear backward passes them), the products in ``main_grad``'s dtype."""

    @staticmethod
    def wgrad_gemm_accum_fp32(total_input: torch.Tensor, grad_output: torch.Tensor, main_grad: torch.Tensor) -> None:
        main_grad.addmm_(grad_output.t().to(main_grad.dtype), total_input.to(main_grad.dtype))

    wgrad_gemm_accum_fp16 = wgrad_gemm_accum_fp32


def _bind_missing_te_gemm() -> None:
    """mcore 0.16.1 bug: without Transformer Engine `te_general_gemm` is never bound (router NameError)."""
    if not hasattr(moe_utils, "te_general_gemm"):
        _patch(moe_utils, "te_general_gemm", None)


def apply(force: bool = False) -> bool:
    """Patch torch/megatron-core for CPU execution. Returns True if CPU patches were applied.

    Idempotent. With CUDA available (and ``force`` False) only the TE-less MoE name fix is applied.
    """
    global _APPLIED
    _bind_missing_te_gemm()
    if torch.cuda.is_available() and not force:
        return False
    if _APPLIED:
        return True

    # T1/T2: device queries and synchronisation.
    _patch(torch.cuda, "current_device", lambda: torch.device("cpu"))
    _patch(torch.cuda, "synchronize", lambda *a, **k: None)
    # T3: factories with device="cuda".
    # Only the factories megatron-core calls with device="cuda": each wrapper costs a Python call on hot paths.
    for name in ("tensor", "zeros", "ones", "empty", "empty_like", "full", "arange"):
        if not getattr(getattr(torch, name), "__tide_cpu_compat__", False):
            _patch(torch, name, _cpu_factory(getattr(torch, name)))
    # T4: Tensor.cuda() is the identity.
    _patch(torch.Tensor, "cuda", lambda self, *a, **k: self)
    # T5: the CUDA RNG is the CPU default generator.
    _patch(torch.cuda, "get_rng_state", _cpu_get_rng_state)
    _patch(torch.cuda, "set_rng_state", _cpu_set_rng_state)
    # torch.manual_seed itself calls torch.cuda.manual_seed_all: seed the CPU generator directly.
    _patch(torch.cuda, "manual_seed", lambda seed: torch.default_generator.manual_seed(int(seed)))
    _patch(torch.cuda, "manual_seed_all", lambda seed: None)
    _patch(torch.cuda.random, "get_rng_state", _cpu_get_rng_state)
    _patch(torch.cuda.random, "set_rng_state", _cpu_set_rng_state)
    _patch(mcore_random, "_get_cuda_rng_state", _cpu_get_cuda_rng_state)
    _patch(mcore_random, "_set_cuda_rng_state", _cpu_set_rng_state)
    logging.getLogger(mcore_random.__name__).addFilter(_DropForkWarning())
    # T6: streams and events.
    _patch(torch.cuda, "Stream", _InertStream)
    _patch(torch.cuda, "Event", _InertStream)
    _patch(torch.cuda, "current_stream", lambda *a, **k: _INERT_STREAM)
    _patch(torch.cuda, "stream", lambda *a, **k: contextlib.nullcontext())
    # T7: no-argument Tensor.type() reports CUDA names.
    _patch(torch.Tensor, "type", _tensor_type)
    # T9: alltoall dispatcher split sizes.
    _patch(moe_utils, "maybe_move_tensor_to_cpu", _maybe_move_tensor_to_cpu)
    _patch(token_dispatcher, "maybe_move_tensor_to_cpu", _maybe_move_tensor_to_cpu)
    # T10: megatron's gradient-accumulation fusion (weight gradients accumulated straight into DDP's main_grad)
    # needs apex's CUDA kernel; the same in-place accumulation on CPU.
    _patch(mcore_layers, "fused_weight_gradient_mlp_cuda", _CpuWgradAccumulation)
    _patch(mcore_layers, "_grad_accum_fusion_available", True)
    _APPLIED = True
    return True


def remove() -> None:
    """Undo every patch made by `apply()`."""
    global _APPLIED
    for (owner, name), original in reversed(list(_SAVED.items())):
        if original is _MISSING:
            delattr(owner, name)
        else:
            setattr(owner, name, original)
    _SAVED.clear()
    _APPLIED = False


def is_applied() -> bool:
    """True while the CPU patches are active."""
    return _APPLIED

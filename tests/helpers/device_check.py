"""A CPU stand-in for "host memory next to a GPU": catches the tensors a CUDA run would find on the wrong device.

On a CPU-only machine the model and the batches share one device, so a missing ``.to(device)`` or a factory
call without ``device=`` goes unnoticed until the first GPU run. `host_is_another_device()` makes host memory
a device of its own for the duration of a block:

- host tensors are `HostTensor`s: their data lives in ordinary CPU memory, but they report the ``meta`` device;
- every tensor created without ``device=`` is a host tensor (torch's default device is ``meta`` inside the
  block), and so is everything a DataLoader hands over (its batches are host memory, as in a GPU run);
- the model's device is the process device, CPU under gloo: the models, megatron's buffers and every tensor
  created with ``device=<the process device>`` or ``device=<a model tensor>.device`` are plain tensors;
- a `TorchDispatchMode` sees every aten op and every c10d collective: an op whose tensor inputs mix host and
  model tensors, outside what CUDA allows (0-dim host scalars, host index tensors, copies), and a collective
  over a host tensor (NCCL refuses them) are recorded as `Violation`s, with the op, the shapes and the frames
  of this project that issued it. Each op then runs on the plain CPU data, so the step goes on and one run
  reports every offence.

``.to(process_device)`` of a host tensor is a real move here (host -> plain), so a batch that is never moved
meets the model's weights as host tensors, exactly where CUDA would raise.
"""

from __future__ import annotations

import contextlib
import os
import sys
import traceback
from dataclasses import dataclass, field
from typing import Iterator

import torch
from torch.utils._pytree import tree_flatten, tree_map
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes

HOST = torch.device("meta")  # what host tensors report; their data is ordinary CPU memory

_COPIES = {"aten::copy_", "aten::_to_copy", "aten::_copy_from", "aten::_copy_from_and_resize", "aten::copy",
           "aten::lift_fresh", "aten::lift_fresh_copy", "aten::lift", "aten::set_"}
# Ops that accept index tensors on the host while the indexed tensor is on the GPU (CUDA moves them).
_INDEXING = {"aten::index", "aten::index_put_", "aten::index_put", "aten::_index_put_impl_", "aten::_unsafe_index",
             "aten::_unsafe_index_put"}
_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class HostTensor(torch.Tensor):
    """Host memory in the harness: CPU data in ``elem``, ``device`` reported as ``meta``."""

    elem: torch.Tensor
    __slots__ = ["elem"]

    @staticmethod
    def __new__(cls, elem: torch.Tensor):
        r = torch.Tensor._make_wrapper_subclass(cls, elem.size(), strides=elem.stride(),
                                                storage_offset=elem.storage_offset(), dtype=elem.dtype,
                                                layout=elem.layout, device=HOST, requires_grad=False)
        r.elem = elem
        return r

    def __repr__(self, *, tensor_contents=None) -> str:
        return f"HostTensor({self.elem!r})"

    # Python-level reads that torch refuses for tensor subclasses: host memory is readable as it is.
    def tolist(self):
        return self.elem.tolist()

    def numpy(self, *, force: bool = False):
        return self.elem.numpy(force=force)

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        # Reached only where the mode is not active (e.g. another thread); the rules are the same.
        return _ACTIVE[-1].dispatch(func, args, kwargs or {}) if _ACTIVE else _run_plain(func, args, kwargs or {})


def _run_plain(func, args, kwargs):
    unwrap = lambda e: e.elem if isinstance(e, HostTensor) else e  # noqa: E731
    return func(*tree_map(unwrap, args), **tree_map(unwrap, kwargs))


@dataclass
class Violation:
    op: str
    inputs: str  # "host f32[4, 8], model f32[8]" ...
    frames: list[str]  # innermost last: this project's frames (file:line function)

    def __str__(self) -> str:
        where = " <- ".join(reversed(self.frames)) or "(no project frame)"
        return f"{self.op}({self.inputs}) at {where}"


def _describe(t: torch.Tensor) -> str:
    side = "host" if isinstance(t, HostTensor) else "model"
    return f"{side} {str(t.dtype).replace('torch.', '')}{list(t.shape)}"


def _project_frames(limit: int = 4) -> list[str]:
    """The innermost frames of this project (and of megatron-core) that led to the current op."""
    frames = []
    for fs in traceback.extract_stack()[:-3]:
        path = os.path.abspath(fs.filename)
        if "/megatron/core/" in path:
            frames.append(f"megatron/core/{path.split('/megatron/core/', 1)[1]}:{fs.lineno} {fs.name}")
        elif path.startswith(_ROOT + os.sep) and "site-packages" not in path and not path.endswith("device_check.py"):
            frames.append(f"{os.path.relpath(path, _ROOT)}:{fs.lineno} {fs.name}")
    return frames[-limit:]


def _is_host_device(device) -> bool:
    return device is not None and torch.device(device).type == HOST.type


@dataclass
class _Checker:
    violations: list[Violation] = field(default_factory=list)
    ops: int = 0
    collectives: int = 0
    max_violations: int = 50

    def record(self, name: str, tensors: list[torch.Tensor]) -> None:
        if len(self.violations) < self.max_violations:
            self.violations.append(Violation(name, ", ".join(_describe(t) for t in tensors), _project_frames()))

    def dispatch(self, func, args, kwargs):
        self.ops += 1
        name = func._schema.name
        flat, _ = tree_flatten((args, kwargs))
        tensors = [t for t in flat if isinstance(t, torch.Tensor)]
        host = [t for t in tensors if isinstance(t, HostTensor)]
        target = kwargs.get("device")
        if name.startswith("c10d::"):
            self.collectives += 1
            if host:
                self.record(name + " [a collective over a host tensor: NCCL refuses it]", tensors)
            out_host = False
        elif target is not None:  # factories and moves: the device asked for decides
            out_host = _is_host_device(target)
            kwargs = {**kwargs, "device": torch.device("cpu")}
        elif name in _COPIES:
            out_host = bool(tensors) and isinstance(tensors[0], HostTensor)
        else:
            checked = tensors
            if name in _INDEXING:
                checked = [tensors[0]] + ([kwargs["values"]] if "values" in kwargs else
                                          [a for a in args[2:3] if isinstance(a, torch.Tensor)])
            on_host = [t for t in checked if isinstance(t, HostTensor) and t.dim() > 0]
            on_model = [t for t in checked if not isinstance(t, HostTensor)]
            if on_host and on_model:
                self.record(name, checked)
            out_host = bool(host) and not on_model
        out = _run_plain(func, args, kwargs)
        inputs = {id(t.elem): t for t in host}
        inputs.update({id(t): t for t in tensors if not isinstance(t, HostTensor)})

        def wrap(e):
            if not isinstance(e, torch.Tensor):
                return e
            if id(e) in inputs:  # in-place ops and out= return an input: hand back the same object
                return inputs[id(e)]
            return HostTensor(e) if out_host else e

        return tree_map(wrap, out)


_ACTIVE: list[_Checker] = []


def _constructors() -> set:
    """torch's device-taking tensor constructors (the originals, also where a compatibility layer wraps them)."""
    from torch.utils._device import _device_constructors

    return {getattr(f, "__wrapped__", f) for f in _device_constructors()}


class _HostByDefault(TorchFunctionMode):
    """torch's default device, made the host: constructors without ``device=`` (or with the host's) build host
    tensors (on CPU, then wrapped; ``torch.tensor`` never reaches the dispatcher on its way to a device)."""

    def __init__(self):
        super().__init__()
        self.constructors = _constructors()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in self.constructors and (kwargs.get("device") is None or _is_host_device(kwargs["device"])):
            with suspended():
                out = func(*args, **{**kwargs, "device": torch.device("cpu")})
            return HostTensor(out)
        return func(*args, **kwargs)


class _Mode(TorchDispatchMode):
    def __init__(self, checker: _Checker):
        super().__init__()
        self.checker = checker

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return self.checker.dispatch(func, args, kwargs or {})


def to_host(value):
    """Every tensor in ``value`` (nested dicts, lists, dataclass-free containers) as host memory."""
    return tree_map(lambda e: HostTensor(e) if isinstance(e, torch.Tensor) and not isinstance(e, HostTensor) else e,
                    value)


@contextlib.contextmanager
def suspended() -> Iterator[None]:
    """Plain CPU semantics inside (no default device, no checks): e.g. the DataLoader's own work."""
    with _disable_current_modes(), torch._C.DisableTorchFunction():
        yield


class HostLoader:
    """A DataLoader whose batches arrive as host memory (what a DataLoader hands a GPU process)."""

    def __init__(self, *args, **kwargs):
        with suspended():
            self.loader = torch.utils.data.DataLoader(*args, **kwargs)

    def __iter__(self):
        with suspended():
            it = iter(self.loader)
        while True:
            with suspended():
                try:
                    batch = next(it)
                except StopIteration:
                    return
            yield to_host(batch)

    def __len__(self) -> int:
        return len(self.loader)


@contextlib.contextmanager
def host_is_another_device(monkeypatch, loader_modules: tuple = ("tide_megatron.training.data",)) -> Iterator[_Checker]:
    """Run the block with host memory as a device of its own (see the module docstring); yields the checker,
    whose ``violations`` list every op that mixed host and model tensors and every collective over a host tensor."""
    for module in loader_modules:
        monkeypatch.setattr(sys.modules[module], "DataLoader", HostLoader)
    checker = _Checker()
    _ACTIVE.append(checker)
    try:
        with _HostByDefault(), _Mode(checker):
            yield checker
    finally:
        _ACTIVE.pop()

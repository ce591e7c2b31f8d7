"""Is Transformer Engine usable here, and which version: the one answer for the backend choice, FP8 and the
start-up checks.

Imports neither megatron-core nor Transformer Engine at module level: a broken TE install (e.g. the empty
``transformer-engine`` meta package, which raises RuntimeError) also breaks ``import megatron.core``, and the
start-up check must still be able to say so.
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
from dataclasses import dataclass
from typing import Optional

import torch
from packaging.version import Version

#: The Transformer Engine range megatron-core 0.16.1 declares (its ``dev`` extra); setup.py's ``gpu`` extra pins it.
TE_REQUIREMENT = ">=2.9.0a0,<2.12.0"


class TransformerEngineError(RuntimeError):
    """Transformer Engine is installed but cannot be used with this torch / machine."""


@dataclass(frozen=True)
class TEStatus:
    installed: bool  # a transformer_engine package is importable by name
    usable: bool  # transformer_engine.pytorch imports and CUDA is available
    version: Optional[str]
    reason: str  # why not usable ("" when usable)


def _installed_version() -> Optional[str]:
    for name in ("transformer_engine", "transformer-engine", "transformer_engine_torch"):
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


@functools.lru_cache(maxsize=None)
def transformer_engine_status() -> TEStatus:
    """Probe once per process: installed? importable? CUDA?"""
    if importlib.util.find_spec("transformer_engine") is None:
        return TEStatus(False, False, None, "transformer_engine is not installed")
    version = _installed_version()
    try:
        import transformer_engine.pytorch as te_pytorch  # noqa: F401  (probe only)

        version = getattr(te_pytorch, "__version__", None) or version
    except Exception as err:  # the meta package raises RuntimeError, a CPU torch an ImportError/OSError
        return TEStatus(True, False, version, f"import transformer_engine.pytorch failed: "
                                              f"{type(err).__name__}: {err}")
    if not torch.cuda.is_available():
        return TEStatus(True, False, version, "torch sees no CUDA device")
    return TEStatus(True, True, version, "")


def transformer_engine_available() -> bool:
    """True when `transformer_engine.pytorch` imports and CUDA is usable."""
    return transformer_engine_status().usable


def te_version_at_least(minimum: str) -> bool:
    """The usable TE's version is >= ``minimum`` (False without a usable TE)."""
    status = transformer_engine_status()
    return status.usable and status.version is not None and Version(status.version) >= Version(minimum)


def check_transformer_engine_install(status: Optional[TEStatus] = None, cuda_build: Optional[str] = None) -> None:
    """One clear error for an installed TE this torch cannot use (a CUDA torch with a TE built for no or another
    CUDA, the empty meta package, TE next to a CPU torch). Absent TE is fine: the local backend runs."""
    status = status or transformer_engine_status()
    cuda_build = torch.version.cuda if cuda_build is None else cuda_build
    if not status.installed or status.usable:
        return
    if "import" not in status.reason:
        return  # importable, only no device: the GPU-allocation check reports that
    version = f" {status.version}" if status.version else ""
    if cuda_build:
        raise TransformerEngineError(
            f"Transformer Engine{version} is installed but unusable with this torch (built for CUDA {cuda_build}): "
            f"{status.reason}. Reinstall it for this torch: pip install -e '.[gpu]' (transformer-engine"
            f"{TE_REQUIREMENT}), or uninstall it to run the local backend")
    raise TransformerEngineError(
        f"Transformer Engine{version} is installed next to a CPU-only torch ({torch.__version__}): {status.reason}. "
        f"It cannot run here and breaks `import megatron.core`; uninstall it (pip uninstall transformer-engine "
        f"transformer-engine-torch) or install the CUDA torch build (TIDE_TORCH=cuda bash scripts/setup_env.sh)")

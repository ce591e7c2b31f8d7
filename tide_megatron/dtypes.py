"""The floating-point dtypes configs and command lines name, and their torch types: one table."""

from __future__ import annotations

import torch

#: Every accepted name: the config's short ones (``precision.dtype``, ``teacher.dtype``) and torch's own
#: (``tide-convert --dtype``, converted checkpoints' metadata).
DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32, "float32": torch.float32,
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
    "fp16": torch.float16, "float16": torch.float16,
}


def torch_dtype(name: str, flag: str = "dtype") -> torch.dtype:
    """The torch dtype of ``name``; a `ValueError` naming ``flag`` and the accepted names otherwise."""
    if name not in DTYPES:
        raise ValueError(f"{flag}: expected one of {', '.join(DTYPES)}, got {name!r}")
    return DTYPES[name]

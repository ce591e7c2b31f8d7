"""Forward noising for BD3LM: one t per sequence, i.i.d. token masking of maskable tokens (spec §1.3)."""

from __future__ import annotations

from typing import Optional

import torch

IGNORE_INDEX = -100  # the label of a position no loss reads (prompt, padding); the one definition
TIME_EPSILON = 1e-3


def sample_t(batch: int, eps: float = TIME_EPSILON, generator: Optional[torch.Generator] = None,
             device: torch.device | str | None = None) -> torch.Tensor:
    """t_b = eps + (1 - eps) * u_b, u_b ~ U[0, 1): fp32 [b], one value shared by all blocks of a sequence."""
    u = torch.rand(batch, generator=generator, device=device, dtype=torch.float32)
    return eps + (1.0 - eps) * u


def mask_tokens(x0: torch.Tensor, labels: torch.Tensor, t: torch.Tensor, mask_id: int,
                generator: Optional[torch.Generator] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """m = [u < t_b] & maskable (labels != -100); xt = where(m, mask_id, x0). Returns (xt, m).

    The linear schedule alpha(t) = 1 - t gives p_mask = t; prompt and padding are never masked.
    """
    if x0.shape != labels.shape:
        raise ValueError(f"x0 {tuple(x0.shape)} and labels {tuple(labels.shape)} must have the same shape")
    u = torch.rand(x0.shape, generator=generator, device=x0.device, dtype=torch.float32)
    masked = (u < t.to(torch.float32)[:, None]) & (labels != IGNORE_INDEX)
    return torch.where(masked, torch.full_like(x0, mask_id), x0), masked

"""The tiny LLaDA2 checkpoints' own modeling file: the plain reference model with the mask handling of the
published LLaDA2.0 modeling file, so that tests meet what a user of a released checkpoint meets.

  - a 2-D attention mask that contains a 0 is turned into a *causal* mask (with key padding), as the
    published file does (with transformers 4.57 a verify that passed it a 2-D padding mask saw a max
    logit difference of 4.1);
  - no mask, or a 2-D mask of ones only, leaves attention bidirectional;
  - a 4-D float mask is added to the attention scores as given.

`write_tiny_llada2` copies this file as `modeling_llada2_moe.py` (and `llada2_reference.py` beside it,
which it imports relatively, as transformers' remote-code loader allows).
"""

from __future__ import annotations

from typing import Optional

import torch

from .llada2_reference import LLaDA2MoeConfig
from .llada2_reference import LLaDA2MoeModelLM as _BidirectionalReference

__all__ = ["LLaDA2MoeConfig", "LLaDA2MoeModelLM"]


class LLaDA2MoeModelLM(_BidirectionalReference):
    """The reference network; only the 2-D mask handling differs (see the module docstring)."""

    def additive_mask(self, attention_mask: Optional[torch.Tensor], b: int, L: int, device) -> torch.Tensor:
        if attention_mask is not None and attention_mask.dim() == 2 and bool((attention_mask == 0).any()):
            allowed = torch.ones(L, L, dtype=torch.bool, device=device).tril()[None, None]
            allowed = allowed & attention_mask.bool()[:, None, None, :]
            return torch.zeros(b, 1, L, L, device=device).masked_fill(~allowed, torch.finfo(torch.float32).min)
        return super().additive_mask(attention_mask, b, L, device)

"""Model adapters for evaluation: a full forward under an explicit mask, and the sampler's protocol.

Every adapter offers ``full_forward(ids, position_ids, mask) -> logits [b, s, V]`` (mask bool
``[b, s, s]``, True = may attend; used for bits-per-byte) and the ``BlockDenoiser`` protocol of
``tide_megatron.diffusion.sampler`` (used for generation):
- :class:`HFDenoiser` for a transformers causal-LM class used as a diffusion LM (Qwen3ForCausalLM):
  a real prefix KV cache (``DynamicCache``; block steps are cropped off again);
- :class:`RecomputeDenoiser` for any ``full_forward`` callable: it keeps the prefix ids and re-runs
  them with each block (exact, no cache; the fallback for models without an inference cache).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch

FullForward = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def additive_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Bool ``[b, q, k]`` (True = may attend) -> additive ``[b, 1, q, k]`` (0 or the dtype's min)."""
    zero = torch.zeros((), dtype=dtype)
    neg = torch.tensor(torch.finfo(dtype).min, dtype=dtype)
    return torch.where(mask[:, None], zero, neg)


class HFDenoiser:
    """A transformers decoder LM (e.g. ``Qwen3ForCausalLM``) driven with explicit 4-D masks.

    transformers uses a ready 4-D mask as given, so the model attends exactly as the mask says
    (no built-in causal mask). ``encode_prefix`` runs the base model only (no LM head over the prompt).
    """

    def __init__(self, model: torch.nn.Module):
        self.model = model.eval()
        self.base = model.get_decoder() if hasattr(model, "get_decoder") else model.model
        self.dtype = next(model.parameters()).dtype
        self.device = next(model.parameters()).device

    def _run(self, ids, position_ids, mask, cache):
        return self.base(input_ids=ids.to(self.device), position_ids=position_ids.to(self.device),
                         attention_mask=additive_mask(mask, self.dtype).to(self.device),
                         past_key_values=cache, use_cache=cache is not None)

    @torch.no_grad()
    def full_forward(self, ids: torch.Tensor, position_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Logits ``[b, s, V]`` of one uncached forward under ``mask``."""
        hidden = self._run(ids, position_ids, mask, None).last_hidden_state
        return self.model.lm_head(hidden)

    @torch.no_grad()
    def encode_prefix(self, ids, position_ids, mask, cache=None):
        from transformers import DynamicCache

        cache = DynamicCache(config=self.model.config) if cache is None else cache
        self._run(ids, position_ids, mask, cache)
        return cache

    @torch.no_grad()
    def forward_block(self, block_ids, position_ids, mask, cache):
        hidden = self._run(block_ids, position_ids, mask, cache).last_hidden_state
        cache.crop(-block_ids.shape[1])  # negative = drop that many (transformers 4.x and 5.x agree)
        return self.model.lm_head(hidden)


@dataclass
class _Prefix:
    ids: torch.Tensor  # [b, K]
    position_ids: torch.Tensor  # [b, K]
    mask: torch.Tensor  # [b, K, K]


class RecomputeDenoiser:
    """``BlockDenoiser`` over a plain full forward: the "cache" is the prefix itself, re-run each call.

    Exact for the block-causal prefix (the prefix never attends to the block); costs one prefix
    forward per denoising step instead of one per block.
    """

    def __init__(self, full_forward: FullForward):
        self.full_forward = full_forward

    def encode_prefix(self, ids, position_ids, mask, cache: Optional[_Prefix] = None) -> _Prefix:
        if cache is None:
            return _Prefix(ids, position_ids, mask)
        return _Prefix(torch.cat([cache.ids, ids], 1), torch.cat([cache.position_ids, position_ids], 1),
                       _join_masks(cache.mask, mask))

    @torch.no_grad()
    def forward_block(self, block_ids, position_ids, mask, cache: _Prefix) -> torch.Tensor:
        ids = torch.cat([cache.ids, block_ids], 1)
        pos = torch.cat([cache.position_ids, position_ids], 1)
        logits = self.full_forward(ids, pos, _join_masks(cache.mask, mask))
        return logits[:, -block_ids.shape[1]:]


def _join_masks(prefix_mask: torch.Tensor, block_mask: torch.Tensor) -> torch.Tensor:
    """[[prefix_mask, 0], [block_mask]]: the prefix never sees the new tokens."""
    b, k, _ = prefix_mask.shape
    q = block_mask.shape[1]
    top = torch.cat([prefix_mask, torch.zeros((b, k, q), dtype=torch.bool)], dim=2)
    return torch.cat([top, block_mask], dim=1)


def count_parameters(model: Any) -> int:
    """Parameter count of a torch module (0 for anything else)."""
    return sum(p.numel() for p in model.parameters()) if isinstance(model, torch.nn.Module) else 0

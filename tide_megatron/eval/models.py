"""Model adapters for evaluation: a full forward under an explicit mask, and the sampler's protocol.

Every adapter offers ``full_forward(ids, position_ids, mask) -> logits [b, s, V]`` (mask bool
``[b, s, s]``, True = may attend; used for bits-per-byte) and the ``BlockDenoiser`` protocol of
``tide_megatron.diffusion.sampler`` (used for generation):
- :class:`HFDenoiser` for a transformers causal-LM class used as a diffusion LM (Qwen3ForCausalLM):
  a real prefix KV cache (``DynamicCache``; block steps are cropped off again);
- :class:`RecomputeDenoiser` for any ``full_forward`` callable: it keeps the prefix ids and re-runs
  them with each block (exact, no cache; the fallback for models without an inference cache);
- :class:`MegatronStudent` for the megatron-core Qwen3 student (``tide_megatron.models.qwen3``):
  a full forward that computes logits only at the rows asked for, driven through
  :class:`RecomputeDenoiser` (megatron-core's static inference KV cache re-applies RoPE by physical
  slot and, on the Transformer Engine path, drops the explicit mask after the prefill, so it cannot
  express left padding with logical positions; see ``load_mcore_student``).
"""

from __future__ import annotations

import inspect
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
        # transformers 5.x renamed the decoder's `past_key_values` argument to `cache`
        params = inspect.signature(self.base.forward).parameters
        self._cache_arg = "cache" if "cache" in params else "past_key_values"

    def _run(self, ids, position_ids, mask, cache):
        cache_kw = {self._cache_arg: cache} if cache is not None else {}
        return self.base(input_ids=ids.to(self.device), position_ids=position_ids.to(self.device),
                         attention_mask=additive_mask(mask, self.dtype).to(self.device),
                         use_cache=cache is not None, **cache_kw)

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

    def __init__(self, full_forward: FullForward, rows_forward: Optional[Callable[..., torch.Tensor]] = None):
        self.full_forward = full_forward
        self.rows_forward = rows_forward  # (ids, pos, mask, rows: slice) -> logits at those rows only

    def encode_prefix(self, ids, position_ids, mask, cache: Optional[_Prefix] = None) -> _Prefix:
        if cache is None:
            return _Prefix(ids, position_ids, mask)
        return _Prefix(torch.cat([cache.ids, ids], 1), torch.cat([cache.position_ids, position_ids], 1),
                       _join_masks(cache.mask, mask))

    @torch.no_grad()
    def forward_block(self, block_ids, position_ids, mask, cache: _Prefix) -> torch.Tensor:
        ids = torch.cat([cache.ids, block_ids], 1)
        pos = torch.cat([cache.position_ids, position_ids], 1)
        mask = _join_masks(cache.mask, mask)
        rows = slice(cache.ids.shape[1], ids.shape[1])
        if self.rows_forward is not None:
            return self.rows_forward(ids, pos, mask, rows)
        return self.full_forward(ids, pos, mask)[:, rows]


def _join_masks(prefix_mask: torch.Tensor, block_mask: torch.Tensor) -> torch.Tensor:
    """[[prefix_mask, 0], [block_mask]]: the prefix never sees the new tokens."""
    b, k, _ = prefix_mask.shape
    q = block_mask.shape[1]
    top = torch.cat([prefix_mask, torch.zeros((b, k, q), dtype=torch.bool)], dim=2)
    return torch.cat([top, block_mask], dim=1)


class MegatronStudent:
    """The megatron-core student (``ExplicitMaskGPTModel``, full-vocabulary logits) for evaluation.

    ``full_forward`` for bits per byte; ``denoiser()`` for the sampler (prefix recomputed per step,
    with the LM head applied only to the block's rows).
    """

    def __init__(self, model: torch.nn.Module, grid: Any = None):
        self.model = model.eval()
        self.device = next(model.parameters()).device
        self.grid = grid  # the process groups the model was built with (closed by close())

    def close(self) -> None:
        """Release the model's process groups (collective; every rank closes in the same order)."""
        if self.grid is not None:
            self.grid.close()
            self.grid = None

    @torch.no_grad()
    def rows_forward(self, ids: torch.Tensor, position_ids: torch.Tensor, mask: torch.Tensor,
                     rows: Optional[slice] = None) -> torch.Tensor:
        d = self.device
        return self.model(ids.to(d), position_ids.to(d), mask.to(d), logits_rows=rows)

    def full_forward(self, ids: torch.Tensor, position_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.rows_forward(ids, position_ids, mask)

    def supports_kv_cache(self) -> bool:
        """megatron-core's static KV cache keeps our explicit mask only with the SDPA core attention:
        after the prefill it switches the mask type to ``no_mask``, which TE attention obeys."""
        from tide_megatron.models.attention import SDPACoreAttention

        return all(isinstance(m.core_attention, SDPACoreAttention)
                   for m in self.model.modules() if hasattr(m, "core_attention"))

    def denoiser(self, max_sequence_length: Optional[int] = None):
        """A sampler model: megatron-core's KV cache when usable and a length is given, else recompute."""
        if max_sequence_length is not None and self.supports_kv_cache():
            return MegatronCachedDenoiser(self, max_sequence_length)
        return RecomputeDenoiser(self.full_forward, self.rows_forward)


@dataclass
class _StaticCache:
    context: Any  # megatron.core.inference.contexts.StaticInferenceContext
    position_ids: torch.Tensor  # [b, K]: logical positions of the cached slots


class MegatronCachedDenoiser:
    """Prefix KV cache through megatron-core's ``StaticInferenceContext`` (one slot per token).

    megatron caches keys before RoPE and re-applies RoPE to slot k with the k-th row of the rotary
    table, so we hand it the positions of every cached slot plus the new ones (logical positions,
    left padding included). A block step writes its keys after the prefix without advancing the
    offset (the next step overwrites them); encoding a finished block advances it.
    """

    def __init__(self, student: MegatronStudent, max_sequence_length: int):
        self.student, self.max_sequence_length = student, max_sequence_length

    def _forward(self, ids, position_ids, mask, cache: _StaticCache, rows: Optional[slice]) -> torch.Tensor:
        from megatron.core.models.gpt.gpt_model import GPTModel

        model, d = self.student.model, self.student.device
        ctx = cache.context
        if ctx.sequence_len_offset + ids.shape[1] > self.max_sequence_length:
            raise ValueError(f"KV cache of {self.max_sequence_length} slots is too short for "
                             f"{ctx.sequence_len_offset + ids.shape[1]} tokens")
        all_pos = torch.cat([cache.position_ids, position_ids], 1).to(d)
        model._logits_rows = rows
        try:  # GPTModel.forward: the explicit-mask wrapper only takes square masks
            return GPTModel.forward(model, ids.to(d), all_pos, ~mask[:, None].to(d), inference_context=ctx,
                                    runtime_gather_output=True)
        finally:
            model._logits_rows = None

    @torch.no_grad()
    def encode_prefix(self, ids, position_ids, mask, cache: Optional[_StaticCache] = None) -> _StaticCache:
        from megatron.core.inference.contexts import StaticInferenceContext

        if cache is None:
            ctx = StaticInferenceContext(ids.shape[0], self.max_sequence_length)
            ctx.materialize_only_last_token_logits = False
            cache = _StaticCache(ctx, torch.zeros((ids.shape[0], 0), dtype=torch.long))
        self._forward(ids, position_ids, mask, cache, rows=slice(0, 0))
        cache.context.sequence_len_offset += ids.shape[1]
        cache.position_ids = torch.cat([cache.position_ids, position_ids], 1)
        return cache

    @torch.no_grad()
    def forward_block(self, block_ids, position_ids, mask, cache: _StaticCache) -> torch.Tensor:
        return self._forward(block_ids, position_ids, mask, cache, rows=None)


def load_mcore_student(mcore_dir: str, dtype: Optional[str] = None) -> MegatronStudent:
    """Build the Qwen3 student at TP=PP=1 on this process and load a ``tide-convert`` directory.

    Starts a world of one (gloo on CPU, NCCL on GPU) when torch.distributed is not running yet.
    Collective over the world (every rank holds a full copy); close the result when done.
    """
    from tide_megatron.distributed import ParallelLayout, build_model_grid, init_distributed
    from tide_megatron.models.convert.mcore_dir import args_from_mcore, load_mcore_checkpoint
    from tide_megatron.models.qwen3 import build_qwen3_model
    from tide_megatron.models.qwen3.convert import QWEN3

    init_distributed()
    args = args_from_mcore(QWEN3, mcore_dir, dtype=dtype)
    grid = build_model_grid(ParallelLayout(), name="eval")
    model = build_qwen3_model(args, grid.pgs, parallel_output=False)
    load_mcore_checkpoint(model, mcore_dir)
    return MegatronStudent(model, grid)


def count_parameters(model: Any) -> int:
    """Parameter count of a torch module (0 for anything else)."""
    return sum(p.numel() for p in model.parameters()) if isinstance(model, torch.nn.Module) else 0

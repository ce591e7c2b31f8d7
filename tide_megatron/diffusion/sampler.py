"""The BD3LM block sampler of spec §7.3: block-wise decoding with low-confidence remasking.

Prompts are left-padded to a block multiple and get *logical* position ids (pad is neither a query
nor a key). Each new block starts fully masked; over ``steps_per_block`` steps the sampler commits the
``k_j`` most confident still-masked positions (the transfer schedule of §7.3c / §11.8). Finished
blocks are appended to a prefix KV cache: with a block-causal mask the keys and values of a block
never depend on later blocks, so encoding each finished block once is exact (the reference re-encodes
the whole prefix at every block and gets the same numbers).

The model is reached through the small :class:`BlockDenoiser` protocol, so the same sampler drives a
transformers model and the megatron-core student (``tide_megatron.eval.models``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Optional, Protocol, Sequence

import torch

from tide_megatron.diffusion.masks import block_causal_mask


class BlockDenoiser(Protocol):
    """What the sampler needs from a model. Masks are bool ``[b, q, k]``, True = may attend.

    ``k`` counts every key the model has cached so far followed by the ``q`` new tokens.
    """

    def encode_prefix(self, ids: torch.Tensor, position_ids: torch.Tensor, mask: torch.Tensor,
                      cache: Optional[Any] = None) -> Any:
        """Append the keys/values of ``ids`` ([b, q]) to ``cache`` (a new one when None); return it."""

    def forward_block(self, block_ids: torch.Tensor, position_ids: torch.Tensor, mask: torch.Tensor,
                      cache: Any) -> torch.Tensor:
        """Logits ``[b, q, V]`` for ``block_ids`` attending to ``cache``; the cache is left unchanged."""


def transfer_schedule(num_masked: int, steps: int) -> list[int]:
    """Tokens committed per step for one block (§7.3c, §11.8), zero entries dropped.

    With t = (S-j)/S and s = (S-j-1)/S, ``k_j = round(n_rem * (1 - s/t))`` = ``round(n_rem / (S-j))``,
    rounded half to even, capped at ``n_rem``. Exact rational arithmetic makes the ties exact.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if num_masked < 0:
        raise ValueError(f"num_masked must be >= 0, got {num_masked}")
    counts: list[int] = []
    n_rem = num_masked
    for j in range(steps):
        k = min(round(Fraction(n_rem, steps - j)), n_rem)  # round() on a Fraction is half-to-even
        n_rem -= k
        if k > 0:
            counts.append(k)
    return counts


@dataclass
class SamplerConfig:
    """Sampling settings; the paper's evaluation uses block 32, steps = max_new_tokens, greedy (§7.2)."""

    mask_id: int
    pad_id: int
    eos_id: int
    block_size: int = 32
    max_new_tokens: int = 256
    steps: int = 256
    temperature: float = 0.0
    stop_ids: tuple[int, ...] = ()  # extra ids that end a completion (besides eos) when cutting output

    def __post_init__(self) -> None:
        for name in ("block_size", "max_new_tokens", "steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"SamplerConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.temperature < 0:
            raise ValueError(f"SamplerConfig.temperature must be >= 0, got {self.temperature}")


@dataclass
class SampleOutput:
    """Generated ids ``[b, n]`` (every decoded position), completions cut at the first stop id,
    the per-position commit step (for inspecting the decoding order) and model-call counts."""

    tokens: torch.Tensor
    completions: list[list[int]]
    commit_step: torch.Tensor
    num_blocks: int
    forward_calls: int
    prefix_tokens_encoded: int


def left_pad_prompts(prompts: Sequence[Sequence[int]], pad_id: int, block_size: int
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Left-pad to a common block multiple (§7.3.1): (ids, valid, logical position ids), all ``[b, P]``."""
    if not prompts:
        raise ValueError("prompts: expected at least one prompt")
    for i, p in enumerate(prompts):
        if len(p) == 0:
            raise ValueError(f"prompts[{i}] is empty: every prompt needs at least one token")
    width = math.ceil(max(len(p) for p in prompts) / block_size) * block_size
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    valid = torch.zeros((len(prompts), width), dtype=torch.bool)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = torch.as_tensor(list(p), dtype=torch.long)
        valid[i, width - len(p):] = True
    position_ids = torch.where(valid, valid.long().cumsum(1) - 1, torch.zeros_like(ids))
    return ids, valid, position_ids


def prefix_block_causal_mask(valid: torch.Tensor, block_size: int) -> torch.Tensor:
    """Bool ``[b, P, P]``: query i may see key k iff k is real and blk(k) <= blk(i) (physical blocks).

    A pad query sees only itself, so no attention row is empty (its output is never used, and pad
    keys are hidden from every real query).
    """
    width = valid.shape[1]
    mask = block_causal_mask(width, block_size)[None] & valid[:, None, :]
    eye = torch.eye(width, dtype=torch.bool)[None]
    return mask | (eye & ~valid[:, :, None])


def _gumbel_argmax(logits: torch.Tensor, temperature: float, generator: Optional[torch.Generator]
                   ) -> torch.Tensor:
    """Gumbel-max sample from softmax(logits / temperature) (argmax when temperature is 0)."""
    if temperature == 0:
        return logits.argmax(-1)
    noise_device = generator.device if generator is not None else logits.device
    u = torch.rand(logits.shape, generator=generator, dtype=torch.float64, device=noise_device)
    gumbel = -torch.log((-torch.log(u.clamp_min(1e-20))).clamp_min(1e-20)).to(logits.device)
    return (logits.double() / temperature + gumbel).argmax(-1)


@torch.no_grad()
def bd3lm_generate(model: BlockDenoiser, prompts: Sequence[Sequence[int]], cfg: SamplerConfig,
                   generator: Optional[torch.Generator] = None) -> SampleOutput:
    """Decode ``cfg.max_new_tokens`` tokens after each prompt with the BD3LM sampler (§7.3).

    Confidence is the softmax probability (fp32) of the chosen token at still-masked positions; the
    ``k_j`` most confident are committed at step j. Decoding stops after the first block in which every
    sequence has produced eos (in this or an earlier block). One deliberate difference from the
    reference: the mask id's logit is set to -inf, so a committed token is never the mask itself.
    """
    ids, valid, position_ids = left_pad_prompts(prompts, cfg.pad_id, cfg.block_size)
    batch = ids.shape[0]
    cache = model.encode_prefix(ids, position_ids, prefix_block_causal_mask(valid, cfg.block_size))
    key_valid = valid.clone()
    next_pos = valid.sum(1)
    prefix_tokens = ids.numel()
    num_blocks = math.ceil(cfg.max_new_tokens / cfg.block_size)
    steps_per_block = math.ceil(cfg.steps / num_blocks)
    generated, commit_steps = [], []
    done = torch.zeros(batch, dtype=torch.bool)
    calls, blocks_run, step_offset = 0, 0, 0
    for b in range(num_blocks):
        n = min(cfg.block_size, cfg.max_new_tokens - b * cfg.block_size)
        block = torch.full((batch, n), cfg.mask_id, dtype=torch.long)
        masked = torch.ones((batch, n), dtype=torch.bool)
        committed_at = torch.full((batch, n), -1, dtype=torch.long)
        block_pos = next_pos[:, None] + torch.arange(n)[None, :]
        mask = torch.cat([key_valid[:, None, :].expand(batch, n, -1),
                          torch.ones((batch, n, n), dtype=torch.bool)], dim=2)
        for j, k_j in enumerate(transfer_schedule(n, steps_per_block)):
            logits = model.forward_block(block, block_pos, mask, cache).float()  # on the model's device
            calls += 1
            if logits.shape[-1] <= cfg.mask_id:
                raise ValueError(f"SamplerConfig.mask_id {cfg.mask_id} is outside the model's vocabulary "
                                 f"of {logits.shape[-1]} logits")
            logits[..., cfg.mask_id] = float("-inf")
            x_hat = _gumbel_argmax(logits, cfg.temperature, generator)
            conf = torch.softmax(logits, dim=-1).gather(-1, x_hat[..., None]).squeeze(-1)
            x_hat, conf = x_hat.cpu(), conf.cpu()  # the sampler's own state is small and stays on CPU
            conf = torch.where(masked, conf, torch.full_like(conf, float("-inf")))
            pick = conf.topk(k_j, dim=-1).indices
            block.scatter_(1, pick, x_hat.gather(1, pick))
            masked.scatter_(1, pick, False)
            committed_at.scatter_(1, pick, step_offset + j)
        step_offset += steps_per_block
        generated.append(block)
        commit_steps.append(committed_at)
        blocks_run += 1
        done |= (block == cfg.eos_id).any(1)
        if bool(done.all()) or b == num_blocks - 1:
            break
        cache = model.encode_prefix(block, block_pos, mask, cache)
        prefix_tokens += block.numel()
        key_valid = torch.cat([key_valid, torch.ones((batch, n), dtype=torch.bool)], dim=1)
        next_pos = next_pos + n
    tokens = torch.cat(generated, dim=1)
    stops = {cfg.eos_id, *cfg.stop_ids}
    completions = []
    for row in tokens.tolist():
        cut = next((i for i, tok in enumerate(row) if tok in stops), len(row))
        completions.append(row[:cut])
    return SampleOutput(tokens=tokens, completions=completions, commit_step=torch.cat(commit_steps, dim=1),
                        num_blocks=blocks_run, forward_calls=calls, prefix_tokens_encoded=prefix_tokens)

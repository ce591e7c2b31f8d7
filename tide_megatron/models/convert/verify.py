"""`tide-convert verify`: a converted megatron model gives transformers' logits, or verify fails.

Both sides run in fp32 on the same random tokens and the same explicit masks, the ones the family is
driven with in TIDE (the architecture's `verify_cases`). transformers gets each mask as a 4-D additive
float mask (0 = may attend, finfo.min = blocked), which modeling code uses as given: a 2-D mask would let
it build a mask of its own (the published LLaDA2 file turns any 2-D mask containing a 0 into a causal one).

HF weights are first rounded to the dtype the converted checkpoint holds each of them in (its parameters
are in the dtype it was converted to; buffers such as the router's expert bias stay fp32), so a bf16
checkpoint is compared with the weights it really holds and the default tolerance, 1e-4 on the max
|logit difference| with fp32 arithmetic on both sides, applies to fp32 and bf16 checkpoints alike. Above
the tolerance verify raises `VerifyFailed` (exit status 1 from the CLI).
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch
import torch.distributed as dist

from tide_megatron.distributed import ParallelLayout, build_model_grid
from tide_megatron.models.convert.architecture import Architecture
from tide_megatron.models.convert.mcore_dir import DTYPES, args_from_mcore, load_mcore_checkpoint, read_mcore_meta
from tide_megatron.models.convert.weights import mapped_tensors

DEFAULT_TOLERANCE = 1e-4


class VerifyFailed(Exception):
    """The converted model's logits differ from transformers' by more than the tolerance."""


def hf_additive_mask(allowed: torch.Tensor, batch: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A bool "may attend" mask ([s, s] or [b, 1, s, s]) as transformers' 4-D additive float mask [b, 1, s, s]."""
    m = torch.zeros(allowed.shape, dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min)
    if m.dim() == 2:
        m = m[None, None]
    return m.expand(batch, 1, *m.shape[-2:])


def _full_vocab(logits: torch.Tensor, tp_group) -> torch.Tensor:
    """Vocab-parallel logits [b, s, V/tp] -> [b, s, V] on every rank of the TP group."""
    size = dist.get_world_size(tp_group)
    if size == 1:
        return logits
    parts = [torch.empty_like(logits) for _ in range(size)]
    dist.all_gather(parts, logits.contiguous(), group=tp_group)
    return torch.cat(parts, dim=-1)


def _round_like_checkpoint(reference: torch.nn.Module, model: torch.nn.Module, mapping, dtype: torch.dtype) -> None:
    """Round the reference's weights that the checkpoint stores as `dtype` parameters (not its fp32 buffers)."""
    if dtype == torch.float32:
        return
    rounded = {hf for _, tensor, _, names in mapped_tensors(model, mapping)
               if isinstance(tensor, torch.nn.Parameter) for hf in names}
    with torch.no_grad():
        for name, param in reference.named_parameters():
            if name in rounded:
                param.copy_(param.to(dtype).to(param.dtype))


def verify(arch: Architecture, hf_dir: str, mcore_dir: str, seq_len: int = 16, batch: int = 2, block_size: int = 4,
           seed: int = 0, tp: Optional[int] = None, tolerance: float = DEFAULT_TOLERANCE,
           trust_remote_code: bool = False, log: Callable[[str], None] = print) -> dict[str, float]:
    """{case: max |logit difference|} between `mcore_dir` (megatron, TP = `tp`, default the world size) and
    transformers' model of `hf_dir`; raises `VerifyFailed` when any case exceeds `tolerance`. Collective."""
    if not tolerance > 0:
        raise ValueError(f"--tolerance must be > 0, got {tolerance}")
    meta = read_mcore_meta(mcore_dir, arch)
    reference = arch.reference(hf_dir, trust_remote_code)
    tp = tp or (dist.get_world_size() if dist.is_initialized() else 1)
    multiple = tp * block_size // math.gcd(tp, block_size)  # block-diffusion masks and sequence parallelism
    if seq_len % multiple:
        seq_len += multiple - seq_len % multiple
        log(f"verify: --seq-length rounded up to {seq_len} (a multiple of the block size and of tp={tp})")
    args = args_from_mcore(arch, mcore_dir, tp=tp, dtype="float32")
    result: dict[str, float] = {}
    with build_model_grid(ParallelLayout(tp=tp), name="verify") as grid:
        model = arch.build_model(args, grid.pgs, backend="local")
        load_mcore_checkpoint(model, mcore_dir)
        model.eval()
        _round_like_checkpoint(reference, model, arch.mapping(args), DTYPES[meta["dtype"]])
        cases = arch.verify_cases(args.vocab_size, seq_len, block_size, batch, torch.Generator().manual_seed(seed))
        with torch.no_grad():
            for name, (ids, pos, allowed) in cases.items():
                ours = _full_vocab(model(ids, pos, allowed).float(), grid.pgs.tp)
                theirs = reference(input_ids=ids, position_ids=pos,
                                   attention_mask=hf_additive_mask(allowed, ids.shape[0])).logits.float()
                result[name] = (ours - theirs).abs().max().item()
                log(f"{name}: max abs logit difference = {result[name]:.3e}")
    failed = {k: v for k, v in result.items() if not v <= tolerance}
    if failed:
        raise VerifyFailed(f"{mcore_dir} does not reproduce {hf_dir}: max abs logit difference "
                           + ", ".join(f"{k} {v:.3e}" for k, v in failed.items())
                           + f" > --tolerance {tolerance:g}")
    log(f"verify: OK (every case within --tolerance {tolerance:g})")
    return result

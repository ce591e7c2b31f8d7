"""WeDLM-8B teacher (§2.2): the Qwen3-8B layout on the shared Qwen3 code, driven with the [x0 ; xt]
block-diffusion mask and duplicated position ids; logits are read from the xt half (§9 pitfalls 4, 5, 17).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

import torch
from megatron.core.process_groups_config import ProcessGroupCollection

from tide_megatron.diffusion.masks import block_diffusion_mask
from tide_megatron.models.qwen3.config import Qwen3Args, wedlm_args_from_hf
from tide_megatron.models.qwen3.convert import WEDLM

WEDLM_MASK_ID = 151665  # §2.2; a Qwen3-vocabulary id


def load_wedlm_teacher(hf_dir: Union[str, Path], pgs: ProcessGroupCollection,
                       params_dtype: torch.dtype = torch.bfloat16,
                       expected_vocab_size: Optional[int] = None) -> tuple[torch.nn.Module, Qwen3Args]:
    """Build this rank's WeDLM stage on the teacher grid and stream its HF weights in; returns (model, args)."""
    if expected_vocab_size is not None:
        vocab = wedlm_args_from_hf(hf_dir).vocab_size
        if expected_vocab_size != vocab:
            raise ValueError(f"{Path(hf_dir) / 'config.json'}: vocab_size={vocab}, expected "
                             f"{expected_vocab_size} (the student / tokenizer vocabulary)")
    model, args, _ = WEDLM.build_from_hf(hf_dir, pgs, params_dtype)
    model.requires_grad_(False)
    return model.eval(), args


def wedlm_inputs(x0: torch.Tensor, xt: torch.Tensor, block_size: int,
                 attention_mask: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Teacher inputs in order [x0 ; xt] (§2.2): ids [b, 2L], position ids [0..L-1, 0..L-1], and the
    bool [b, 1, 2L, 2L] "may attend" mask; rows and columns of padded positions (attention_mask 0) are
    blocked in both halves (§9 pitfall 17)."""
    if x0.shape != xt.shape:
        raise ValueError(f"x0 {tuple(x0.shape)} and xt {tuple(xt.shape)} must have the same shape")
    b, L = x0.shape
    ids = torch.cat([x0, xt], dim=1)
    pos = torch.arange(L, device=x0.device).repeat(2).expand(b, 2 * L)
    allowed = block_diffusion_mask(L, block_size, "x0_xt", device=x0.device)[None, None].expand(b, 1, 2 * L, 2 * L)
    if attention_mask is not None:
        real = attention_mask.bool().repeat(1, 2)
        allowed = allowed & real[:, None, :, None] & real[:, None, None, :]
    return ids, pos, allowed


def xt_rows(rows: torch.Tensor, L: int) -> torch.Tensor:
    """(batch, position in xt) pairs → rows of the [x0 ; xt] teacher sequence (the second half, §9.4)."""
    return torch.stack([rows[:, 0], rows[:, 1] + L], dim=1)

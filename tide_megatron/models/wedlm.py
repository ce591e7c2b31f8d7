"""WeDLM-8B teacher (§2.2): the Qwen3-8B layout on the shared Qwen3 code, driven with the [x0 ; xt]
block-diffusion mask and duplicated position ids; logits are read from the xt half (§9 pitfalls 4, 5, 17).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

import torch
import torch.distributed as dist
from megatron.core.process_groups_config import ProcessGroupCollection

from tide_megatron.diffusion.masks import block_diffusion_mask
from tide_megatron.models.conversion import load_hf_into_model
from tide_megatron.models.qwen3.config import Qwen3Args, qwen3_args_from_hf, read_hf_config
from tide_megatron.models.qwen3.convert import check_vocab, qwen3_mapping
from tide_megatron.models.qwen3.model import build_qwen3_model
from tide_megatron.models.safetensors_reader import SafetensorsReader

WEDLM_MODEL_TYPES = ("wedlm", "qwen3")
WEDLM_MASK_ID = 151665  # §2.2; a Qwen3-vocabulary id


def wedlm_args_from_hf(hf_dir: Union[str, Path], tp: int = 1, pp: int = 1,
                       params_dtype: torch.dtype = torch.bfloat16) -> Qwen3Args:
    """Qwen3 arguments for a WeDLM (or plain Qwen3) checkpoint; the WeDLM-7B layout (no QK-norm) is refused."""
    source = str(Path(hf_dir) / "config.json")
    hf = read_hf_config(hf_dir)
    if hf.get("qk_norm") is False:
        raise ValueError(f"{source}: qk_norm=false (the Qwen2.5-based WeDLM-7B layout); the WeDLM teacher expects "
                         "the Qwen3-8B layout with QK-norm")
    if any(t != "full_attention" for t in hf.get("layer_types") or []):
        raise ValueError(f"{source}: layer_types must all be 'full_attention' (§2.2), got {set(hf['layer_types'])}")
    return qwen3_args_from_hf(hf, tp=tp, pp=pp, params_dtype=params_dtype, model_types=WEDLM_MODEL_TYPES,
                              source=source, perform_initialization=False, pipeline_dtype=params_dtype,
                              batch_p2p_comm=False)


def load_wedlm_teacher(hf_dir: Union[str, Path], pgs: ProcessGroupCollection,
                       params_dtype: torch.dtype = torch.bfloat16, expected_vocab_size: Optional[int] = None):
    """Build this rank's WeDLM stage on the teacher grid and load the HF weights; returns (model, args)."""
    tp, pp = dist.get_world_size(pgs.tp), dist.get_world_size(pgs.pp)
    args = wedlm_args_from_hf(hf_dir, tp, pp, params_dtype)
    if expected_vocab_size is not None and expected_vocab_size != args.vocab_size:
        raise ValueError(f"{Path(hf_dir) / 'config.json'}: vocab_size={args.vocab_size}, expected "
                         f"{expected_vocab_size} (the student / tokenizer vocabulary)")
    reader = SafetensorsReader(str(hf_dir))
    check_vocab(args, reader, str(hf_dir))
    model = build_qwen3_model(args, pgs)
    offset = dist.get_rank(pgs.pp) * (args.config.num_layers // pp)
    load_hf_into_model(model, reader, qwen3_mapping(args), dist.get_rank(pgs.tp), tp, offset)
    reader.close()
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

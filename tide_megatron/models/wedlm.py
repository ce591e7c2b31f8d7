"""WeDLM-8B teacher (§2.2): the Qwen3-8B layout on the shared Qwen3 code, driven with the [x0 ; xt]
block-diffusion mask and duplicated position ids; logits are read from the xt half (§9 pitfalls 4, 5, 17).
Its inputs (every CompDemo pass in one compacted [x0 ; xt_1 ; xt_2] sequence) are built by teacher/passes.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

import torch
import torch.distributed as dist
from megatron.core.process_groups_config import ProcessGroupCollection

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

"""WeDLM-8B teacher (§2.2): the Qwen3-8B layout on the shared Qwen3 code, driven with the [x0 ; xt]
block-diffusion mask and duplicated position ids; logits are read from the xt half (§9 pitfalls 4, 5, 17).
Its inputs (every CompDemo pass in one compacted [x0 ; xt_1 ; xt_2] sequence) are built by teacher/passes.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

import torch
from megatron.core.process_groups_config import ProcessGroupCollection

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

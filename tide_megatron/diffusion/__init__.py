"""BD3LM student-side diffusion: noising, [xt ; x0] inputs, block-diffusion masks, collation (spec §1)."""

from tide_megatron.diffusion.collate import collate_student
from tide_megatron.diffusion.inputs import bd3lm_inputs
from tide_megatron.diffusion.masks import block_causal_mask, block_diffusion_mask, check_block_multiple
from tide_megatron.diffusion.noise import IGNORE_INDEX, mask_tokens, sample_t

__all__ = ["collate_student", "bd3lm_inputs", "block_causal_mask", "block_diffusion_mask", "check_block_multiple",
           "IGNORE_INDEX", "mask_tokens", "sample_t"]

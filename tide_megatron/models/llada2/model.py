"""Build the LLaDA2-MoE teacher as a megatron-core GPTModel and run it bidirectionally (§2.1).

The GPTModel gets the LLaDA2 layer specs (megatron's MoELayer), partial RoPE (``rotary_percent``) with
the checkpoint's θ, an untied output layer, and the process groups of the teacher grid. Outputs are
vocab-parallel logits: TP rank r holds rows [r*V/tp, (r+1)*V/tp).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.models.backends import BackendSpecProvider
from megatron.core.models.gpt import GPTModel
from megatron.core.process_groups_config import ProcessGroupCollection

from tide_megatron.distributed.grids import ParallelLayout
from tide_megatron.models.llada2.config import LLaDA2Config
from tide_megatron.models.llada2.spec import decoder_block_spec


def ensure_megatron_buffers() -> None:
    """megatron's local core attention uses a global scratch buffer that only initialize_model_parallel sets."""
    if getattr(parallel_state, "_GLOBAL_MEMORY_BUFFER", None) is None:
        parallel_state._set_global_memory_buffer()


def layout_of(pgs: ProcessGroupCollection) -> ParallelLayout:
    """The TP/PP/EP/ETP sizes of a process-group collection."""
    return ParallelLayout(tp=dist.get_world_size(pgs.tp), pp=dist.get_world_size(pgs.pp),
                          ep=dist.get_world_size(pgs.ep), etp=dist.get_world_size(pgs.expt_tp))


def build_llada2_model(cfg: LLaDA2Config, pgs: ProcessGroupCollection, params_dtype: torch.dtype = torch.bfloat16,
                       backend: Optional[BackendSpecProvider] = None) -> GPTModel:
    """This rank's stage of the teacher: embeddings on the first stage, the output layer on the last."""
    ensure_megatron_buffers()
    layout = layout_of(pgs)
    tconfig = cfg.to_transformer_config(layout, params_dtype=params_dtype)
    pp_rank, pp_size = dist.get_rank(pgs.pp), layout.pp
    model = GPTModel(
        config=tconfig,
        transformer_layer_spec=decoder_block_spec(tconfig, backend, pp_rank=pp_rank),
        vocab_size=cfg.vocab_size,
        max_sequence_length=cfg.max_position_embeddings,
        pre_process=pp_rank == 0,
        post_process=pp_rank == pp_size - 1,
        parallel_output=True,
        share_embeddings_and_output_weights=cfg.tie_word_embeddings,
        position_embedding_type="rope",
        rotary_percent=cfg.rotary_percent,
        rotary_base=cfg.rope_theta,
        pg_collection=pgs,
    )
    model.requires_grad_(False)
    return model.eval()


def key_padding_mask(attention_mask: Optional[torch.Tensor], input_ids: torch.Tensor) -> Optional[torch.Tensor]:
    """[b, L] 0/1 (1 = real token) → megatron's [b, 1, 1, L] bool (True = masked key), or None.

    Only keys are masked (§9 pitfall 17): pad query rows still see the real tokens and are ignored.
    """
    if attention_mask is None:
        return None
    if attention_mask.shape != input_ids.shape:
        raise ValueError(f"attention_mask shape {tuple(attention_mask.shape)} must equal input_ids shape "
                         f"{tuple(input_ids.shape)}")
    return ~attention_mask.bool()[:, None, None, :]


def forward_llada2(model: GPTModel, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                   position_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
    """One non-pipelined forward: [b, L] ids → vocab-parallel logits [b, L, V/tp] (no logit shift, §9.3)."""
    b, L = input_ids.shape
    if position_ids is None:
        position_ids = torch.arange(L, device=input_ids.device).expand(b, L)
    return model(input_ids, position_ids, key_padding_mask(attention_mask, input_ids))

"""Build the LLaDA2-MoE teacher as a megatron-core GPTModel and run it bidirectionally (§2.1).

The shared `ExplicitMaskGPTModel` (explicit mask, explicit-position RoPE) gets the LLaDA2 layer specs
(megatron's MoELayer), partial RoPE (``rotary_percent``) with the checkpoint's θ, an untied output
layer, the MoE kernels of the backend (models/moe_kernels.py) and the process groups of the teacher grid.
Attention is bidirectional over the valid keys: the mask is a `KeyPaddingMask` (fused padding attention
under TE, SDPA on CPU). Outputs are vocab-parallel logits: TP rank r holds rows [r*V/tp, (r+1)*V/tp).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.process_groups_config import ProcessGroupCollection
from megatron.core.tensor_parallel.random import get_cuda_rng_tracker

from tide_megatron.distributed.grids import ParallelLayout
from tide_megatron.distributed.init import seed_model_parallel_rng
from tide_megatron.models.attention_mask import KeyPaddingMask
from tide_megatron.models.backend import backend_name
from tide_megatron.models.gpt import ExplicitMaskGPTModel
from tide_megatron.models.llada2.config import LLaDA2Config
from tide_megatron.models.llada2.spec import decoder_block_spec
from tide_megatron.models.moe_kernels import PERMUTE_FUSION_MIN_TE, MoEKernels, resolve_moe_kernels
from tide_megatron.models.transformer_engine import te_version_at_least


def ensure_megatron_runtime(pgs: ProcessGroupCollection, seed: int = 1234) -> None:
    """Global bits megatron reads even when process groups are passed in: the scratch buffer and the
    model-parallel RNG tracker (forked by the embedding under sequence parallelism). Seeded only if unset."""
    if getattr(parallel_state, "_GLOBAL_MEMORY_BUFFER", None) is None:
        parallel_state._set_global_memory_buffer()
    if "model-parallel-rng" not in get_cuda_rng_tracker().get_states():
        seed_model_parallel_rng(seed, dist.get_rank(pgs.tp), dist.get_rank(pgs.ep), dist.get_rank(pgs.expt_tp))


def layout_of(pgs: ProcessGroupCollection) -> ParallelLayout:
    """The TP/PP/EP/ETP sizes of a process-group collection."""
    return ParallelLayout(tp=dist.get_world_size(pgs.tp), pp=dist.get_world_size(pgs.pp),
                          ep=dist.get_world_size(pgs.ep), etp=dist.get_world_size(pgs.expt_tp))


def default_moe_kernels(backend: Optional[str] = None) -> MoEKernels:
    """The backend's default MoE kernels (grouped GEMM + fused permutation with TE, neither on the local backend)."""
    return resolve_moe_kernels(backend_name(backend), te_version_ok=te_version_at_least(PERMUTE_FUSION_MIN_TE))


def build_llada2_model(cfg: LLaDA2Config, pgs: ProcessGroupCollection, params_dtype: torch.dtype = torch.bfloat16,
                       backend: Optional[str] = None, moe_kernels: Optional[MoEKernels] = None) -> ExplicitMaskGPTModel:
    """This rank's stage of the teacher: embeddings on the first stage, the output layer on the last.

    ``moe_kernels`` (from the teacher config, `resolve_moe_kernels`) defaults to the backend's default.
    """
    ensure_megatron_runtime(pgs)
    layout = layout_of(pgs)
    tconfig = cfg.to_transformer_config(layout, params_dtype=params_dtype,
                                        moe_kernels=moe_kernels or default_moe_kernels(backend))
    pp_rank, pp_size = dist.get_rank(pgs.pp), layout.pp
    model = ExplicitMaskGPTModel(
        config=tconfig,
        transformer_layer_spec=decoder_block_spec(tconfig, backend, pp_rank=pp_rank),
        vocab_size=cfg.vocab_size,
        max_sequence_length=cfg.max_position_embeddings,
        pre_process=pp_rank == 0,
        post_process=pp_rank == pp_size - 1,
        parallel_output=True,
        share_embeddings_and_output_weights=cfg.tie_word_embeddings,
        rotary_percent=cfg.rotary_percent,
        rotary_base=cfg.rope_theta,
        pg_collection=pgs,
    )
    model.requires_grad_(False)
    return model.eval()


def key_padding_mask(attention_mask: Optional[torch.Tensor], input_ids: torch.Tensor) -> KeyPaddingMask:
    """[b, L] 0/1 (1 = real token) → a `KeyPaddingMask`: every query sees every real key (§2.1).

    Only keys are masked (§9 pitfall 17): pad query rows still see the real tokens and are ignored. No
    padding at all (or no mask) gives no mask, which TE runs as ``no_mask``.
    """
    if attention_mask is not None and attention_mask.shape != input_ids.shape:
        raise ValueError(f"attention_mask shape {tuple(attention_mask.shape)} must equal input_ids shape "
                         f"{tuple(input_ids.shape)}")
    b, L = input_ids.shape
    return KeyPaddingMask.from_attention_mask(attention_mask, b, L)


def forward_llada2(model: ExplicitMaskGPTModel, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                   position_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
    """One non-pipelined forward: [b, L] ids → vocab-parallel logits [b, L, V/tp] (no logit shift, §9.3)."""
    b, L = input_ids.shape
    if position_ids is None:
        position_ids = torch.arange(L, device=input_ids.device).expand(b, L)
    return model(input_ids, position_ids, key_padding_mask(attention_mask, input_ids))

"""Build the Qwen3 megatron-core model on a model grid's process groups (spec §1.1)."""

from __future__ import annotations

from typing import Optional

from megatron.core.process_groups_config import ProcessGroupCollection

from tide_megatron.models.gpt import ExplicitMaskGPTModel, ensure_global_memory_buffer
from tide_megatron.models.qwen3.config import Qwen3Args
from tide_megatron.models.qwen3.spec import qwen3_block_spec


def build_qwen3_model(args: Qwen3Args, pgs: ProcessGroupCollection, backend: Optional[str] = None,
                      parallel_output: bool = True) -> ExplicitMaskGPTModel:
    """A Qwen3 GPTModel for this rank's pipeline stage: explicit mask, explicit positions, no logit shift.

    `pgs` comes from `tide_megatron.distributed` (e.g. the student grid's `.pgs`). With
    `parallel_output=True` logits stay vocab-parallel over `pgs.tp`.
    """
    tp, pp = pgs.tp.size(), pgs.pp.size()
    cfg = args.config
    if (cfg.tensor_model_parallel_size, cfg.pipeline_model_parallel_size) != (tp, pp):
        raise ValueError(f"config was made for tp={cfg.tensor_model_parallel_size}, "
                         f"pp={cfg.pipeline_model_parallel_size} but the process groups have tp={tp}, pp={pp}")
    if cfg.sequence_parallel:
        ensure_global_memory_buffer()
    pp_rank = pgs.pp.rank()
    return ExplicitMaskGPTModel(
        config=cfg,
        transformer_layer_spec=qwen3_block_spec(cfg, backend, pp_rank),
        vocab_size=args.vocab_size,
        max_sequence_length=args.max_position_embeddings,
        pre_process=pp_rank == 0,
        post_process=pp_rank == pp - 1,
        parallel_output=parallel_output,
        share_embeddings_and_output_weights=args.tie_embeddings,
        rotary_base=args.rotary_base,
        rotary_percent=args.rotary_percent,
        pg_collection=pgs,
    )

"""megatron-core GPTModel with explicit-position RoPE, explicit attention masks and row-sliced outputs.

Shared by the Qwen3 student and the teachers: no built-in causal mask, no logit shift (§9.3), RoPE
gathered per position id (§1.4), `logits_rows` to materialise outputs only where a loss reads them
(§9.21; e.g. the xt half of [xt ; x0]), and ``output="hidden"`` for the final hidden states instead of
logits (the caller applies the LM head itself, a chunk at a time: the teacher payloads, the student's
sequence-chunked head).
"""

from __future__ import annotations

from typing import Literal, Union

import torch
from megatron.core import parallel_state, tensor_parallel
from megatron.core.models.gpt.gpt_model import GPTModel
from megatron.core.utils import make_tp_sharded_tensor_for_checkpoint

from tide_megatron.models.attention_mask import AttentionMaskSpec
from tide_megatron.models.embedding import use_main_grad_embedding
from tide_megatron.models.output_rows import OutputRowsTransformerLayer, prefix_length
from tide_megatron.models.rotary import ExplicitPositionRotaryEmbedding

RowSelector = Union[slice, torch.Tensor, None]
Output = Literal["logits", "hidden"]


def ensure_global_memory_buffer() -> None:
    """Sequence-parallel gathers use megatron's global scratch buffer, which only
    `initialize_model_parallel` creates; models built on explicit process groups need it too."""
    if parallel_state._GLOBAL_MEMORY_BUFFER is None:
        parallel_state._set_global_memory_buffer()


def to_core_attention_mask(allowed: Union[AttentionMaskSpec, torch.Tensor, None], seq_len: int,
                           device: torch.device, batch: int = 1,
                           recompute: bool = False) -> Union[AttentionMaskSpec, torch.Tensor]:
    """Public mask (bool, True = may attend, [s, s] / [b, s, s] / [b, 1, s, s]) -> megatron's (True = blocked).

    The result is a [b, 1, s, s] view (TE's arbitrary-mask attention wants the batch dimension). A mask
    description (models/attention_mask.py) goes to the core attention as it is, on ``device``; under
    activation recompute as its dense mask, since megatron's checkpoint saves the mask as a tensor.
    """
    if isinstance(allowed, AttentionMaskSpec):
        allowed.check(batch, seq_len)
        allowed = allowed.to(device)
        return allowed.blocked() if recompute else allowed
    if allowed is None:
        allowed = torch.ones(seq_len, seq_len, dtype=torch.bool, device=device)
    elif allowed.dtype != torch.bool:
        raise ValueError(f"attention_mask must be bool (True = may attend), got {allowed.dtype}")
    if allowed.dim() == 2:
        allowed = allowed[None, None]
    elif allowed.dim() == 3:
        allowed = allowed[:, None]
    if allowed.dim() != 4 or allowed.shape[-2:] != (seq_len, seq_len):
        raise ValueError(f"attention_mask must broadcast to [b, 1, {seq_len}, {seq_len}], "
                         f"got {tuple(allowed.shape)}")
    return (~allowed.to(device)).expand(batch, 1, seq_len, seq_len)


class ExplicitMaskGPTModel(GPTModel):
    """GPTModel whose RoPE follows `position_ids` and whose attention follows the caller's mask only."""

    def __init__(self, *args, rotary_base: float = 10000.0, rotary_percent: float = 1.0, **kwargs):
        kwargs["position_embedding_type"] = "none"  # RoPE is ours; no learned absolute positions
        super().__init__(*args, **kwargs)
        if self.pre_process:  # the word embedding's weight gradient goes straight into DDP's main_grad
            use_main_grad_embedding(self.embedding.word_embeddings)
        self.explicit_rotary = ExplicitPositionRotaryEmbedding(
            self.config.kv_channels, rotary_base, rotary_percent, self.config.rotary_interleaved)
        self._logits_rows: RowSelector = None
        self._output: Output = "logits"

    def tie_embeddings_and_output_weights_state_dict(self, sharded_state_dict, output_layer_weight_key: str,
                                                     first_stage_word_emb_key: str, metadata: dict = {}) -> None:
        """As megatron-core's, but the replica id uses this model's dp_cp group, not the global one.

        mcore 0.16.1 reads `parallel_state.get_data_parallel_rank` here (the tied output layer of a last
        pipeline stage), which fails for models built on their own process groups.
        """
        if not self.post_process or self.pre_process or getattr(self, "mtp_process", False):
            return super().tie_embeddings_and_output_weights_state_dict(
                sharded_state_dict, output_layer_weight_key, first_stage_word_emb_key, metadata)
        dp_cp = metadata["dp_cp_group"]
        del sharded_state_dict[output_layer_weight_key]
        sharded_state_dict[output_layer_weight_key] = make_tp_sharded_tensor_for_checkpoint(
            tensor=self.shared_embedding_or_output_weight(), key=first_stage_word_emb_key,
            replica_id=(1, 0, dp_cp.rank()), allow_shape_mismatch=True, tp_group=self.tp_group, dp_cp_group=dp_cp)

    def _preprocess(self, input_ids, position_ids, *args, **kwargs):
        out = list(super()._preprocess(input_ids, position_ids, *args, **kwargs))
        out[1] = self.explicit_rotary(position_ids)  # slot 1 is rotary_pos_emb
        return tuple(out)

    def _postprocess(self, hidden_states, **kwargs):
        rows, output = self._logits_rows, self._output
        if (rows is None and output == "logits") or not self.post_process or kwargs.get("labels") is not None:
            return super()._postprocess(hidden_states, **kwargs)
        sp = self.output_layer.sequence_parallel
        if sp:  # gather the full sequence before picking rows
            hidden_states = tensor_parallel.gather_from_sequence_parallel_region(hidden_states,
                                                                                 group=self.pg_collection.tp)
        if rows is not None:
            hidden_states = hidden_states[rows]
        if output == "hidden":
            return hidden_states.transpose(0, 1).contiguous()
        output_weight = self.shared_embedding_or_output_weight() if self.share_embeddings_and_output_weights else None
        self.output_layer.sequence_parallel = False
        try:
            logits, _ = self.output_layer(hidden_states, weight=output_weight,
                                          runtime_gather_output=kwargs.get("runtime_gather_output"))
        finally:
            self.output_layer.sequence_parallel = sp
        return logits.transpose(0, 1).contiguous()

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor,
                attention_mask: Union[AttentionMaskSpec, torch.Tensor, None] = None, logits_rows: RowSelector = None,
                output: Output = "logits", **kwargs) -> torch.Tensor:
        """ids/position_ids [b, s]; attention_mask bool True = may attend, or a mask description
        (models/attention_mask.py) -> logits [b, rows, V(/tp)], or with ``output="hidden"`` the final (normed,
        sequence-gathered) hidden states [b, rows, h] on the last stage.

        `logits_rows` (a slice or index tensor over the sequence) limits the output to those rows.
        """
        if position_ids is None:
            raise ValueError("position_ids are required (RoPE uses explicit positions, spec §1.4)")
        if output not in ("logits", "hidden"):
            raise ValueError(f"output must be 'logits' or 'hidden', got {output!r}")
        mask = to_core_attention_mask(attention_mask, input_ids.shape[1], input_ids.device, input_ids.shape[0],
                                      recompute=self.config.recompute_granularity is not None)
        self._logits_rows, self._output = logits_rows, output
        last = self._row_cutting_layer(logits_rows, kwargs)
        if last is not None:  # the last layer computes only the rows read (models/output_rows.py)
            last.output_rows = prefix_length(logits_rows)
        try:
            return super().forward(input_ids, position_ids, mask, **kwargs)
        finally:
            self._logits_rows, self._output = None, "logits"
            if last is not None:
                last.output_rows = None

    def _row_cutting_layer(self, rows: RowSelector, kwargs: dict):
        """The last layer, when it may compute only a prefix of rows: the output is read at ``rows = [0, n)`` on
        this (last) stage, with no activation recompute (it would re-run the layer on every row), no
        sequence parallelism (rows are split over ranks) and no inference cache."""
        layers = getattr(self.decoder, "layers", None)
        if (prefix_length(rows) is None or not self.post_process or not layers or kwargs.get("labels") is not None
                or kwargs.get("inference_context") is not None or self.config.recompute_granularity is not None
                or self.config.sequence_parallel or not isinstance(layers[-1], OutputRowsTransformerLayer)):
            return None
        return layers[-1]

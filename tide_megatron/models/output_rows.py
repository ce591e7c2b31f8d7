"""A transformer layer that computes only the query rows its output is read at (spec §9.21).

When a forward's output is read at a prefix of the sequence only (the student's xt half of ``[xt ; x0]``, or
the kept xt rows of its compacted input), the last layer's other rows feed nothing: their keys and values
are still needed (earlier rows attend to them) but not their attention output, projection and MLP. So the
last layer computes keys and values from every row and everything else for the first ``output_rows`` rows
only; the values of those rows are those of the full layer.
"""

from __future__ import annotations

from typing import Optional

from megatron.core.transformer.transformer_layer import TransformerLayer


def prefix_length(rows) -> Optional[int]:
    """``n`` when ``rows`` is the slice ``[0, n)`` (the only row selection a layer can cut to), else None."""
    if isinstance(rows, slice) and rows.start in (None, 0) and rows.step in (None, 1) and rows.stop is not None \
            and rows.stop > 0:
        return int(rows.stop)
    return None


class OutputRowsTransformerLayer(TransformerLayer):
    """megatron-core's `TransformerLayer`; with ``output_rows = n`` set (by the model, for one forward) it
    returns only the first ``n`` rows, computed from the keys and values of every row."""

    output_rows: Optional[int] = None

    def _cuts_rows(self, hidden_states, kwargs) -> bool:
        n = self.output_rows
        core = getattr(self.self_attention, "core_attention", None)
        return (n is not None and n < hidden_states.shape[0] and hasattr(core, "query_rows")
                and not self.recompute_input_layernorm and not self.offload_attn_norm
                and not getattr(self.self_attention, "checkpoint_core_attention", False)
                and not getattr(self.config, "attention_output_gate", False)
                and kwargs.get("context") is None and kwargs.get("inference_context") is None
                and kwargs.get("packed_seq_params") is None and kwargs.get("padding_mask") is None)

    def _forward_attention(self, hidden_states, *args, **kwargs):
        if args or not self._cuts_rows(hidden_states, kwargs):
            return super()._forward_attention(hidden_states, *args, **kwargs)
        n = self.output_rows
        core = self.self_attention.core_attention
        core.query_rows = n  # the core attention answers only the first n queries
        try:
            attention = self.self_attention(
                self.input_layernorm(hidden_states), attention_mask=kwargs.get("attention_mask"),
                rotary_pos_emb=kwargs.get("rotary_pos_emb"), rotary_pos_cos=kwargs.get("rotary_pos_cos"),
                rotary_pos_sin=kwargs.get("rotary_pos_sin"), attention_bias=kwargs.get("attention_bias"),
                sequence_len_offset=kwargs.get("sequence_len_offset"))
        finally:
            core.query_rows = None
        with self.bias_dropout_add_exec_handler():
            hidden_states = self.self_attn_bda(self.training, self.config.bias_dropout_fusion)(
                attention, hidden_states[:n], self.hidden_dropout)
        return hidden_states, None

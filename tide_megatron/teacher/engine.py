"""Inference-only teacher forward over the teacher grid, returning loss-sized payloads (§2, §9.21).

`TeacherEngine` wraps a megatron-core GPTModel (LLaDA2 or WeDLM) and runs it with ``output="hidden"``
(`models.gpt.ExplicitMaskGPTModel`: the final hidden states, sequence-gathered under sequence
parallelism); payloads are then computed from those and this TP rank's LM-head rows by
`teacher.payloads`, so the full [b, L, V] logits never exist. With PP > 1 the forward runs megatron's forward-only pipeline schedule
and the payload is broadcast from the last stage, so every rank of the teacher model-parallel group
returns the same payload. No gradients anywhere.
"""

from __future__ import annotations

from typing import Optional, Union

import torch
import torch.distributed as dist
from megatron.core.pipeline_parallel.p2p_communication import P2PCommunicator
from megatron.core.pipeline_parallel.schedules import get_forward_backward_func
from megatron.core.process_groups_config import ProcessGroupCollection

from tide_megatron.models.attention_mask import AttentionMaskSpec, KeyPaddingMask
from tide_megatron.teacher import payloads


def allowed_attention_mask(attention_mask: Union[AttentionMaskSpec, torch.Tensor, None], b: int,
                           L: int) -> Union[AttentionMaskSpec, torch.Tensor, None]:
    """Our masks → what `ExplicitMaskGPTModel` takes (None = attend everywhere).

    [b, L] 0/1 key padding (1 = real token; LLaDA2, §2.1) → a `KeyPaddingMask` (every query sees every real
    key; fused padding attention under TE); a mask description (e.g. the [x0 ; xt] `BlockDiffusionMask` of
    WeDLM, §2.2) as given; [b, L, L] or [b, 1, L, L] bool "may attend" masks as given.
    """
    if attention_mask is None:
        return None
    if isinstance(attention_mask, AttentionMaskSpec):
        attention_mask.check(b, L)
        return attention_mask
    if attention_mask.dim() == 2:
        return KeyPaddingMask.from_attention_mask(attention_mask, b, L)
    if attention_mask.dim() == 3:
        attention_mask = attention_mask[:, None]
    if attention_mask.dim() != 4 or attention_mask.shape[-2:] != (L, L) or attention_mask.shape[0] not in (1, b):
        raise ValueError(f"attention_mask must be [b, L], [b, L, L] or [b, 1, L, L] with L={L}, "
                         f"got {tuple(attention_mask.shape)}")
    if attention_mask.dtype != torch.bool:
        raise ValueError("a 3-D/4-D attention_mask must be bool (True = may attend)")
    return attention_mask.expand(b, 1, L, L)


class TeacherEngine:
    """Teacher forward + payload extraction for one model stage on the teacher grid.

    The model runs with ``output="hidden"``; on the last stage the LM-head weight is read for the payloads.
    """

    def __init__(self, model: torch.nn.Module, pgs: ProcessGroupCollection, pad_token_id: int = 0,
                 micro_batch_size: Optional[int] = None, chunk_tokens: Optional[int] = None):
        self.model = model.eval()
        self.model.requires_grad_(False)
        self.pgs = pgs
        self.config = model.config
        self.pad_token_id = pad_token_id
        self.micro_batch_size = micro_batch_size
        self.chunk_tokens = chunk_tokens
        self.tp_group = pgs.tp
        self.tp_size, self.tp_rank = dist.get_world_size(pgs.tp), dist.get_rank(pgs.tp)
        self.pp_size, self.pp_rank = dist.get_world_size(pgs.pp), dist.get_rank(pgs.pp)
        self.is_last_stage = self.pp_rank == self.pp_size - 1
        self.lm_head_weight = None
        if self.is_last_stage:
            self.lm_head_weight = (model.shared_embedding_or_output_weight()
                                   if model.share_embeddings_and_output_weights else model.output_layer.weight)

    @property
    def vocab_size(self) -> int:
        """The full teacher vocabulary (all TP ranks)."""
        return self.model.vocab_size

    # ---- forward ----------------------------------------------------------------------------------
    def _pad_for_sequence_parallel(self, ids, allowed, pos):
        """Sequence parallelism needs L % tp == 0: pad with pad tokens no real query can see (cropped after)."""
        b, L = ids.shape
        extra = (-L) % self.tp_size if self.config.sequence_parallel else 0
        if not extra:
            return ids, allowed, pos
        ids = torch.cat([ids, ids.new_full((b, extra), self.pad_token_id)], 1)
        pos = torch.cat([pos, pos[:, -1:] + torch.arange(1, extra + 1, device=pos.device)], 1)
        if isinstance(allowed, AttentionMaskSpec):
            return ids, allowed.padded(extra), pos
        if allowed is None:
            return ids, KeyPaddingMask(torch.arange(L + extra, device=ids.device).expand(b, L + extra) < L), pos
        full = torch.zeros(b, 1, L + extra, L + extra, dtype=torch.bool, device=ids.device)
        full[..., :L, :L] = allowed
        idx = torch.arange(L, L + extra, device=ids.device)
        full[..., idx, idx] = True  # padded queries see only themselves
        return ids, full, pos

    @torch.no_grad()
    def hidden_states(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                      position_ids: Optional[torch.Tensor] = None) -> Optional[torch.Tensor]:
        """Final hidden states [b, L, h] on the last pipeline stage (None on the others)."""
        b, L = input_ids.shape
        if position_ids is None:
            position_ids = torch.arange(L, device=input_ids.device).expand(b, L)
        if position_ids.shape != (b, L):
            raise ValueError(f"position_ids must be [b, L] = {(b, L)}, got {tuple(position_ids.shape)}")
        mask = allowed_attention_mask(attention_mask, b, L)
        ids, mask, pos = self._pad_for_sequence_parallel(input_ids, mask, position_ids)
        if self.pp_size == 1:
            out = self.model(ids, pos, mask, output="hidden")
        else:
            out = self._pipelined_forward(ids, mask, pos)
        return None if out is None else out[:, :L]

    def _pipelined_forward(self, ids, mask, pos) -> Optional[torch.Tensor]:
        """megatron's forward-only 1F1B schedule over micro-batches; hidden states on the last stage."""
        b, L = ids.shape
        mbs = self.micro_batch_size or b
        if b % mbs:
            raise ValueError(f"batch size {b} is not a multiple of the teacher micro_batch_size {mbs}")
        micro = []
        for s in range(0, b, mbs):
            m = None if mask is None else (mask[s:s + mbs] if mask.shape[0] == b else mask)
            micro.append((ids[s:s + mbs], m, pos[s:s + mbs]))
        batches = iter(micro)

        def forward_step(data_iterator, model):
            m_ids, m_mask, m_pos = next(data_iterator)
            output = model(m_ids, m_pos, m_mask, output="hidden")

            def collect(output_tensor, non_loss_data=False):
                return output_tensor

            return output, collect

        run = get_forward_backward_func(pp_size=self.pp_size)
        collected = run(forward_step_func=forward_step, data_iterator=batches, model=[self.model],
                        num_microbatches=len(micro), seq_length=L, micro_batch_size=mbs, forward_only=True,
                        collect_non_loss_data=True,
                        p2p_communicator=P2PCommunicator(pp_group=self.pgs.pp, config=self.config),
                        pg_collection=self.pgs)
        return torch.cat(collected, 0) if self.is_last_stage else None

    # ---- payloads ---------------------------------------------------------------------------------
    def _from_last_stage(self, value: Optional[torch.Tensor], shape, dtype) -> torch.Tensor:
        """Broadcast a payload from the last pipeline stage to every stage."""
        if self.pp_size == 1:
            return value
        buf = value.contiguous() if self.is_last_stage else torch.empty(shape, dtype=dtype, device=self._device())
        dist.broadcast(buf, src=dist.get_global_rank(self.pgs.pp, self.pp_size - 1), group=self.pgs.pp)
        return buf

    def _device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def token_logprobs(self, input_ids: torch.Tensor, targets: torch.Tensor,
                       attention_mask: Optional[torch.Tensor] = None,
                       position_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Payload (a): fp32 [b, L] log p(targets[b, i]) under the teacher at position i (no shift, §9.3).

        Vocab-parallel: gather minus a TP-reduced logsumexp; targets < 0 give 0.
        """
        if targets.shape != input_ids.shape:
            raise ValueError(f"targets shape {tuple(targets.shape)} must equal input_ids shape {tuple(input_ids.shape)}")
        if (targets >= self.vocab_size).any():
            raise ValueError(f"a target id is >= the teacher vocabulary size {self.vocab_size}")
        hidden = self.hidden_states(input_ids, attention_mask, position_ids)
        out = None
        if self.is_last_stage:
            out = payloads.token_logprobs(hidden, self.lm_head_weight, targets, self.tp_group, self.chunk_tokens)
        return self._from_last_stage(out, tuple(targets.shape), torch.float32)

    def _check_rows(self, input_ids: torch.Tensor, rows: torch.Tensor, vocab_limit: int) -> None:
        b, L = input_ids.shape
        if rows.dim() != 2 or rows.shape[1] != 2:
            raise ValueError(f"rows must be [n, 2] (batch index, position), got {tuple(rows.shape)}")
        if rows.numel() and ((rows[:, 0] < 0).any() or (rows[:, 0] >= b).any() or (rows[:, 1] < 0).any()
                             or (rows[:, 1] >= L).any()):
            raise ValueError(f"rows must index a [b, L] = {(b, L)} batch")
        if not 0 < vocab_limit <= self.vocab_size:
            raise ValueError(f"vocab_limit={vocab_limit} must lie in (0, {self.vocab_size}]")

    @torch.no_grad()
    def logit_rows(self, input_ids: torch.Tensor, rows: torch.Tensor, vocab_limit: int,
                   attention_mask: Optional[torch.Tensor] = None,
                   position_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Payload (b): fp32 [n, vocab_limit] logits at ``rows`` ([n, 2] of (batch, position)), ids < ``vocab_limit``."""
        self._check_rows(input_ids, rows, vocab_limit)
        hidden = self.hidden_states(input_ids, attention_mask, position_ids)
        out = None
        if self.is_last_stage:
            out = payloads.logit_rows(hidden[rows[:, 0], rows[:, 1]], self.lm_head_weight, vocab_limit, self.tp_group)
        return self._from_last_stage(out, (rows.shape[0], vocab_limit), torch.float32)

    @torch.no_grad()
    def logit_row_shards(self, input_ids: torch.Tensor, rows: torch.Tensor, vocab_limit: int,
                         attention_mask: Optional[torch.Tensor] = None,
                         position_ids: Optional[torch.Tensor] = None) -> Optional[torch.Tensor]:
        """Payload (b) left vocab-parallel: this TP rank's fp32 ``[n, V/tp]`` slice of the logits at ``rows`` (zero
        past ``vocab_limit``) on the last pipeline stage, None on the others; nothing is gathered here
        (`distributed.payload_exchange.vocab_shards_to_own_rows` sends each rank its own rows)."""
        self._check_rows(input_ids, rows, vocab_limit)
        hidden = self.hidden_states(input_ids, attention_mask, position_ids)
        if not self.is_last_stage:
            return None
        return payloads.logit_row_shard(hidden[rows[:, 0], rows[:, 1]], self.lm_head_weight, vocab_limit,
                                        self.tp_group)

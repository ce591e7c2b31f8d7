"""The student side of a step with the output layer and the loss run over groups of sequences (spec §9.21).

The student trunk runs once over ``[xt ; x0]`` and returns the final hidden states of the xt half
(``model(..., output="hidden")``, `models.gpt.ExplicitMaskGPTModel`). The vocabulary projection and the loss
(CE + the TIDE term) then run ``chunk_seqs`` sequences at a time, each group backpropagating into the hidden
states before the next group's logits exist; the trunk backpropagates once at the end. Only the rows some
term reads get logits (`losses.modes.rows_read`: the masked rows, typically 40-55% of them); the others would
get a zero gradient anyway. So at most ``chunk_seqs / b`` of the read rows' logits (and of their gradient) are
alive at any moment, instead of the whole ``[b, L, V]`` tensor plus the loss's own full-size temporaries.
The output weight's gradient is accumulated in place (into megatron DDP's ``main_grad`` buffer when there is
one, as megatron's fused weight-gradient path does), so no ``[V, h]`` temporary is made per group either.

Every term is a mean over a set that is partitioned by sequence (maskable tokens for CE, distilled rows for
KL/TIDAL, active chunks for CALM), so each group's mean is re-weighted by its share of the micro-batch
count: the value and the gradients equal the unchunked loss (the per-micro-batch normalisation of §9.9).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Optional

import torch

from tide_megatron.align.rows import DistilledRows
from tide_megatron.losses import LossInputs, Objective, bd3lm_ce_from_logprobs
from tide_megatron.losses.modes import rows_read, student_token_logprobs


def supports_chunked_head(model: torch.nn.Module) -> bool:
    """Tied embeddings and no tensor parallelism: the output projection is ``hidden @ embedding.T``."""
    return bool(getattr(model, "share_embeddings_and_output_weights", False)) and \
        model.config.tensor_model_parallel_size == 1 and getattr(model, "post_process", True)


def _sequence_groups(b: int, chunk_seqs: int) -> list[torch.Tensor]:
    return [torch.arange(s, min(b, s + chunk_seqs)) for s in range(0, b, chunk_seqs)]


def _subset(inputs: LossInputs, seqs: torch.Tensor, logits: torch.Tensor) -> LossInputs:
    """The loss inputs of the sequences ``seqs`` (rows re-indexed to the group)."""
    sub = replace(inputs, student_logits=logits, x0=inputs.x0[seqs], masked=inputs.masked[seqs],
                  maskable=inputs.maskable[seqs], t=inputs.t[seqs])
    if inputs.rows is not None:
        # Distilled rows are ordered by sequence (nonzero order), so a group's rows are one slice: views, no copy.
        batch = inputs.rows.batch
        lo, hi = (int(torch.searchsorted(batch, v, right=r)) for v, r in ((seqs[0], False), (seqs[-1], True)))
        sub.rows = DistilledRows(batch[lo:hi] - seqs[0], inputs.rows.student_pos[lo:hi],
                                 inputs.rows.teacher_pos[lo:hi])
        sub.teacher_rows = inputs.teacher_rows[lo:hi]
    for name in ("student_chunk", "teacher_chunk", "teacher_token_logp", "active"):
        value = getattr(inputs, name)
        if value is not None:
            setattr(sub, name, value[seqs])
    return sub


def _term_count(objective: Objective, name: str, inputs: LossInputs) -> int:
    """How many elements the term ``name`` averages over (distilled rows, or active chunks)."""
    spec = next(c for c in objective.components if c.name == name)
    return int(inputs.active.sum()) if spec.chunk_level else len(inputs.rows)


WGRAD_BLOCK_ROWS = 8192  # vocabulary rows per in-place weight-gradient update (bounds the matmul's temporary)


def _accumulate_weight_grad(weight: torch.Tensor, grad_logits: torch.Tensor, hidden: torch.Tensor) -> None:
    """``dW += grad_logits^T @ hidden`` in place: into ``main_grad`` under megatron DDP, else into ``.grad``.

    Done in blocks of vocabulary rows: a single ``addmm_`` over all V rows builds a ``[V, h]`` temporary.
    """
    g2, h2 = grad_logits.reshape(-1, grad_logits.shape[-1]), hidden.reshape(-1, hidden.shape[-1])
    buf = getattr(weight, "main_grad", None)
    if buf is None:
        if weight.grad is None:
            weight.grad = torch.zeros_like(weight)
        buf = weight.grad
    h2 = h2.to(buf.dtype)
    for v0 in range(0, buf.shape[0], WGRAD_BLOCK_ROWS):
        v1 = min(buf.shape[0], v0 + WGRAD_BLOCK_ROWS)
        buf[v0:v1].addmm_(g2[:, v0:v1].t().to(buf.dtype), h2)


def _check_row_order(inputs: LossInputs) -> None:
    if inputs.rows is not None and len(inputs.rows) > 1 and bool((inputs.rows.batch.diff() < 0).any()):
        raise ValueError("chunked loss: distilled rows must be ordered by sequence (as aligned_rows/masked_rows give)")


def chunked_loss_backward(hidden: torch.Tensor, weight: torch.Tensor, inputs: LossInputs,
                          objective: Optional[Objective], step: int, total_steps: int, chunk_seqs: int,
                          weights: dict[str, float], scale: float = 1.0,
                          backward: bool = True) -> dict[str, float]:
    """Loss of the micro-batch from xt-half hidden states ``[b, L, h]``; with ``backward`` its gradient flows
    into ``hidden``'s graph (scaled by ``scale``, e.g. 1/grad_accum). Returns the unscaled loss terms."""
    _check_row_order(inputs)
    b = hidden.shape[0]
    h_det = hidden.detach()
    grad_hidden = torch.zeros_like(h_det) if backward else None
    n_maskable = max(1, int(inputs.maskable.sum()))
    totals: dict[str, float] = {}
    counts: dict[str, int] = {}
    if objective is not None:
        for spec in objective.components:
            counts[spec.name] = max(1, _term_count(objective, spec.name, inputs))
    read = rows_read(inputs)
    for seqs in _sequence_groups(b, chunk_seqs):
        rows = slice(int(seqs[0]), int(seqs[-1]) + 1)
        seq, pos = read[rows].nonzero(as_tuple=True)  # this group's read rows, in (sequence, position) order
        h_rows = h_det[rows][seq, pos]
        with torch.no_grad():
            logits = torch.nn.functional.linear(h_rows, weight)
        logits.requires_grad_(backward)
        with torch.set_grad_enabled(backward):
            sub = _subset(inputs, seqs, logits)
            sub.student_rows = torch.stack([seq, pos], 1)
            share_ce = int(sub.maskable.sum()) / n_maskable
            if objective is None:
                ce = bd3lm_ce_from_logprobs(student_token_logprobs(sub), sub.masked, sub.maskable, sub.t)
                terms = {}
            else:
                out = objective(sub, step=step, total_steps=total_steps)
                ce, terms = out.ce, out.terms
            loss = ce * share_ce
            parts = {"loss/ce": float(ce.detach()) * share_ce}
            for name, value in terms.items():
                share = _term_count(objective, name, sub) / counts[name]
                loss = loss + weights[name] * value * share
                parts[f"loss/{name}"] = float(value.detach()) * share
        if backward:
            (loss * scale).backward()  # reaches only the logits of this group (the payload is constant)
            grad_logits = logits.grad
            grad_hidden[rows][seq, pos] = grad_logits @ weight.detach()
            _accumulate_weight_grad(weight, grad_logits, h_rows)
            del grad_logits
        for key, value in parts.items():
            totals[key] = totals.get(key, 0.0) + value
        del logits, loss, sub, ce, terms  # nothing of this group may outlive it
        if objective is not None:
            del out
    totals["loss/total"] = totals["loss/ce"] + sum(weights[k[5:]] * v for k, v in totals.items()
                                                   if k not in ("loss/ce",))
    if backward:
        hidden.backward(grad_hidden)
    return totals

"""TIDE losses as pure functions over tensors (spec §1.5, §3, §5, §6, §9).

Every function computes in fp32 whatever the input dtype and accepts logits sharded over a
tensor-parallel group in megatron-core's vocab-parallel layout (``tp_group``; None = unsharded). Values and
gradients equal the unsharded ones; only row statistics are all-reduced, the vocabulary is never gathered.

Functional API (usable outside the trainer):

- ``token_logprobs(logits, targets, tp_group)``: ``z[target] - logsumexp(z)`` per position, fp32.
- ``bd3lm_ce(student_logits, x0, masked, maskable, t, tp_group)``: BD3LM CE, weight ``1/(t+1e-6)``,
  normalised by the maskable count (§1.5).
- ``TidalSchedule(...).lam(t, step, total_steps)`` / ``.omega(t)``: λ of §3.1-3.2 and ω of §3.5.
- ``tidal_loss(student_rows, teacher_rows, lam, omega, temperature, vocab_limit, tp_group)``: §3.
- ``kl_loss(student_rows, teacher_rows, temperature, reverse, vocab_limit, tp_group)``: §6 KL baselines.
  TIDAL and KL process rows in chunks (``chunk_rows``): extra memory O(chunk_rows x V) plus the gradient.
- ``chunk_loglik(token_logp, chunk_ids, num_chunks)``: sparse chunk sums (chunk id per token, -1 = none).
- ``calm_loss(student_ll, teacher_ll, active, temperature, reverse)``: Reverse CALM / CALM (§5.7).
- ``chunk_tidal_loss(student_ll, teacher_ll, active, lam, omega, temperature, reverse)``: §5.8.
- ``ObjectiveConfig`` (the ``objective:`` config section), ``build_objective(mode, ObjectiveConfig)`` -> ``Objective``;
  ``objective(LossInputs, step, total_steps, tp_group)`` -> ``LossOutput(total, ce, terms)``: the mode catalogue of §6.

The distilled positions K (``align.rows``) and CompDemo's passes (``align.compdemo``) are alignment-side:
the data stage and the teacher passes build them before any loss runs.
"""

from tide_megatron.losses.calm import calm_loss, chunk_loglik, chunk_tidal_loss
from tide_megatron.losses.ce import bd3lm_ce, bd3lm_ce_from_logprobs, bd3lm_weight
from tide_megatron.losses.kl import kl_loss
from tide_megatron.losses.modes import (
    MODES,
    LossInputs,
    LossOutput,
    Objective,
    ObjectiveConfig,
    build_objective,
    parse_mode,
)
from tide_megatron.losses.tidal import TidalSchedule, tidal_loss
from tide_megatron.losses.vocab_parallel import logsumexp, token_logprobs

__all__ = [
    "LossInputs", "LossOutput", "MODES", "Objective", "ObjectiveConfig", "TidalSchedule", "bd3lm_ce",
    "bd3lm_ce_from_logprobs", "bd3lm_weight", "build_objective", "calm_loss", "chunk_loglik",
    "chunk_tidal_loss", "kl_loss", "logsumexp", "parse_mode", "tidal_loss", "token_logprobs",
]

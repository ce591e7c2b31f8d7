"""Token-level KL baselines with temperature (spec §6: kl_aligned, reverse_kl_aligned, kl, reverse_kl).

forward: ``T^2 * mean_i KL(p_tau^T || p_s^T)``; reverse: ``T^2 * mean_i KL(p_s^T || p_tau^T)``, with
``p^T = softmax(z/T)`` over the shared vocabulary, in fp32 (§9.12), averaged over the distilled rows.
"""

from __future__ import annotations

from typing import Optional

import torch

from tide_megatron.losses.distill_rows import distill_rows
from tide_megatron.distributed.vocab_parallel import ProcessGroup


def kl_loss(
    student_rows: torch.Tensor,
    teacher_rows: torch.Tensor,
    temperature: float = 2.0,
    reverse: bool = False,
    vocab_limit: Optional[int] = None,
    tp_group: ProcessGroup = None,
    chunk_rows: Optional[int] = None,
) -> torch.Tensor:
    """Forward (``reverse=False``) or reverse temperature-scaled KL over ``[n, V_local]`` rows; fp32 scalar.

    0 with no rows (§9.10). Only the student rows receive a gradient.
    """
    n = student_rows.shape[0]
    w = torch.full((n,), 1.0 / max(1, n), dtype=torch.float32, device=student_rows.device)
    return distill_rows("reverse_kl" if reverse else "forward_kl", student_rows, teacher_rows, w, temperature,
                        vocab_limit=vocab_limit, tp_group=tp_group, chunk_rows=chunk_rows)

"""Reference masks for tests, written out from the spec query by query (independent of diffusion/masks.py)."""

import torch


def bd3lm_allowed(L: int, block: int, x0_first: bool) -> torch.Tensor:
    """Spec §1.4 for ``[xt ; x0]`` (M_BD, M_OBC, M_BC), bool ``[2L, 2L]``, True = may attend; ``x0_first`` swaps
    the halves (WeDLM's ``[x0 ; xt]``, §2.2)."""
    allowed = torch.zeros(2 * L, 2 * L, dtype=torch.bool)
    for q in range(2 * L):
        for k in range(2 * L):
            q_x0, k_x0 = (q < L, k < L) if x0_first else (q >= L, k >= L)
            bq, bk = (q % L) // block, (k % L) // block
            allowed[q, k] = (q_x0 == k_x0 and bq == bk) or (not q_x0 and k_x0 and bk < bq) or \
                (q_x0 and k_x0 and bk <= bq)
    return allowed

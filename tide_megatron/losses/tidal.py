"""TIDAL, the timestep-aware interpolated distillation loss (spec §3; the reference calls it "TAID").

``lam_train = lam0 + (lam1 - lam0) * g(k / max(N_opt, 1))`` with g cosine ``(1 - cos(pi*rho))/2`` or
linear; the timestep axis scales it by ``(1 - t)``. The target ``r = sg(softmax((1-lam) z_s/T + lam z_tau/T))``
is mixed in logit space and ``L = T^2 * (1/|K|) * sum_i omega(t_i) * KL(r || softmax(z_s/T))_i``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch

from tide_megatron.losses.distill_rows import distill_rows
from tide_megatron.distributed.vocab_parallel import ProcessGroup

DECAYS = ("cosine", "linear")
AXIS_MODES = ("both", "training_only", "timestep_only")
TIMESTEP_WEIGHTS = ("uniform", "midrange")
MIDRANGE_SIGMA = 0.15


@dataclass(frozen=True)
class TidalSchedule:
    """The λ schedule and timestep weight of §3.1-3.5, validated on construction."""

    lambda_init: float = 0.1
    lambda_max: float = 0.9
    decay: str = "cosine"
    axis_mode: str = "both"
    timestep_weight: str = "uniform"

    def __post_init__(self) -> None:
        for name, value, valid in (("decay", self.decay, DECAYS), ("axis_mode", self.axis_mode, AXIS_MODES),
                                   ("timestep_weight", self.timestep_weight, TIMESTEP_WEIGHTS)):
            if value not in valid:
                raise ValueError(f"TidalSchedule.{name} must be one of {valid}, got {value!r}")
        for name in ("lambda_init", "lambda_max"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"TidalSchedule.{name} must be in [0, 1], got {getattr(self, name)}")

    def lambda_train(self, step: int, total_steps: int) -> float:
        """Training-progress λ: grows from ``lambda_init`` to ``lambda_max`` (§3.1, §9.14: optimizer steps)."""
        rho = step / max(total_steps, 1)
        g = 0.5 * (1.0 - math.cos(math.pi * rho)) if self.decay == "cosine" else rho
        return self.lambda_init + (self.lambda_max - self.lambda_init) * g

    def lam(self, t: torch.Tensor, step: int, total_steps: int) -> torch.Tensor:
        """Per-sequence λ in fp32 for diffusion times ``t`` (§3.2)."""
        t = t.float()
        if self.axis_mode == "both":
            return self.lambda_train(step, total_steps) * (1.0 - t)
        if self.axis_mode == "training_only":
            return torch.full_like(t, self.lambda_train(step, total_steps))
        return self.lambda_max * (1.0 - t)

    def omega(self, t: torch.Tensor) -> torch.Tensor:
        """Timestep weight ω(t) in fp32: 1, or ``exp(-(t-0.5)^2 / (2*0.15^2))`` for midrange (§3.5)."""
        t = t.float()
        if self.timestep_weight == "uniform":
            return torch.ones_like(t)
        return torch.exp(-((t - 0.5) ** 2) / (2 * MIDRANGE_SIGMA ** 2))


def tidal_loss(
    student_rows: torch.Tensor,
    teacher_rows: torch.Tensor,
    lam: torch.Tensor | float,
    omega: Optional[torch.Tensor] = None,
    temperature: float = 2.0,
    vocab_limit: Optional[int] = None,
    tp_group: ProcessGroup = None,
    chunk_rows: Optional[int] = None,
) -> torch.Tensor:
    """``T^2 * (1/max(1,n)) * sum_i omega_i * KL(r_i || p_s,i)`` over distilled rows; fp32 scalar (§3.3-3.6).

    Args:
        student_rows, teacher_rows: ``[n, V_local]`` logits at the distilled positions K, possibly
            vocab-parallel; ``vocab_limit`` keeps global ids below it (the shared vocab, §9.1).
        lam: λ per row ``[n]`` (or one float). omega: ω per row ``[n]``, default 1.
        Normalised by the row count, not by sum ω (§9.9); 0 with no rows.
    """
    n = student_rows.shape[0]
    dev = student_rows.device
    lam_t = torch.as_tensor(lam, dtype=torch.float32, device=dev)
    lam_t = lam_t.expand(n) if lam_t.dim() == 0 else lam_t
    omega_t = torch.ones(n, dtype=torch.float32, device=dev) if omega is None else omega.float()
    return distill_rows("tidal", student_rows, teacher_rows, omega_t / max(1, n), temperature, lam=lam_t,
                        vocab_limit=vocab_limit, tp_group=tp_group, chunk_rows=chunk_rows)

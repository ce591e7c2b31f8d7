"""The mode catalogue of spec §6: which distillation term is added to the BD3LM CE, and its validation.

Token modes (Pipeline B) compare logit rows at the distilled positions (``*_aligned``: pairs of §2.4;
plain ``kl``/``reverse_kl``/``taid``: every masked position). Chunk modes (Pipeline A) compare chunk
log-likelihoods (§5). ``x+y`` composes token modes: CE once plus each component's weighted term; the
ALM modes cannot be composed. ``L = L_CE + sum_components weight * term``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Optional

import torch

from tide_megatron.losses.calm import calm_loss, chunk_loglik, chunk_tidal_loss
from tide_megatron.losses.ce import bd3lm_ce_from_logprobs
from tide_megatron.losses.kl import kl_loss
from tide_megatron.losses.rows import DistilledRows, gather_rows, teacher_rows_to_shard
from tide_megatron.losses.tidal import TidalSchedule, tidal_loss
from tide_megatron.losses.vocab_parallel import ProcessGroup, token_logprobs

QWEN3_SHARED_VOCAB = 151646  # ids [0, 151646): regular BPE plus <|endoftext|>, <|im_start|>, <|im_end|> (§2.2)


@dataclass(frozen=True)
class ModeSpec:
    """One catalogue entry: the term it adds, its direction and where its inputs come from."""

    name: str
    term: str  # "kl" | "tidal" | "calm" | "chunk_tidal"
    reverse: bool
    aligned: bool  # token modes: K from alignment pairs (True) or all masked positions (False)
    pipeline: str
    paper_name: str
    default_timestep_weight: str = "uniform"

    @property
    def chunk_level(self) -> bool:
        return self.term in ("calm", "chunk_tidal")

    @property
    def uses_tidal(self) -> bool:
        return self.term in ("tidal", "chunk_tidal")


MODES: dict[str, ModeSpec] = {m.name: m for m in (
    ModeSpec("kl_aligned", "kl", False, True, "B", "KL baseline"),
    ModeSpec("reverse_kl_aligned", "kl", True, True, "B", "TIDE-Cross (B)"),
    ModeSpec("taid_aligned", "tidal", False, True, "B", "TIDE-Shared (B, native)", "midrange"),
    ModeSpec("kl", "kl", False, False, "B", "(not in the paper)"),
    ModeSpec("reverse_kl", "kl", True, False, "B", "(not in the paper)"),
    ModeSpec("taid", "tidal", False, False, "B", "(not in the paper)", "midrange"),
    ModeSpec("alm", "calm", False, False, "A", "CALM baseline"),
    ModeSpec("reverse_alm", "calm", True, False, "A", "TIDE-Cross (A, native)"),
    ModeSpec("alm_taid", "chunk_tidal", False, False, "A", "TIDE-Shared (A)"),
    ModeSpec("reverse_alm_taid", "chunk_tidal", True, False, "A", "(not in the paper)"),
)}

REVERSE_TIDAL_WARNING = (
    "TIDAL with a reverse objective: the target mixes (1-lambda)*student into the teacher, and lambda grows "
    "to lambda_max late in training, so the student's self-selection gate s is weakened exactly when the "
    "teacher should dominate; the TIDE README advises against it (spec §5.8). Allowed, but check the ablation."
)


@dataclass(frozen=True)
class ObjectiveConfig:
    """Hyperparameters of §6/§7 (reference names in comments); validated by ``build_objective``.

    ``taid_timestep_weight=None`` takes the mode's paper recipe: midrange for token TIDAL, uniform for
    the chunk modes (§5.8, §10).
    """

    kl_temperature: float = 2.0  # kl_temperature; also TIDAL's T
    alm_temperature: float = 5.0  # alm_temperature (launch script; Python default 2.0, §10)
    kl_weight: float = 1.0
    taid_weight: float = 1.0
    alm_weight: float = 1.0
    taid_lambda_init: float = 0.1
    taid_lambda_max: float = 0.9
    taid_decay: str = "cosine"
    taid_axis_mode: str = "both"
    taid_timestep_weight: Optional[str] = None
    shared_vocab: Optional[int] = QWEN3_SHARED_VOCAB  # token modes slice both sides to ids below this (§9.1)
    chunk_rows: Optional[int] = None  # rows per fp32 chunk in KL/TIDAL (memory bound), None = automatic

    def validate(self) -> None:
        for name in ("kl_temperature", "alm_temperature"):
            if not getattr(self, name) > 0:
                raise ValueError(f"objective config: {name} must be > 0, got {getattr(self, name)}")
        for name in ("kl_weight", "taid_weight", "alm_weight"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"objective config: {name} must be >= 0, got {getattr(self, name)}")
        if self.shared_vocab is not None and self.shared_vocab < 1:
            raise ValueError("objective config: shared_vocab must be a positive id count or None, "
                             f"got {self.shared_vocab}")
        self.schedule("uniform")

    def schedule(self, default_weight: str) -> TidalSchedule:
        """The TIDAL schedule, with the mode's default timestep weight unless one is set."""
        return TidalSchedule(self.taid_lambda_init, self.taid_lambda_max, self.taid_decay, self.taid_axis_mode,
                             self.taid_timestep_weight or default_weight)


@dataclass
class LossInputs:
    """Everything a step hands to the objective (batch-first; see docs/ARCHITECTURE.md).

    Token modes need ``rows`` (distilled positions) and ``teacher_rows`` (teacher logits at them, already
    CompDemo-merged). Chunk modes need the sparse chunk ids, the teacher's per-token log-probs and ``active``.
    ``masked`` is the (chunk-expanded in Pipeline A) student mask; it feeds the CE.
    """

    student_logits: torch.Tensor  # [b, L, V_local]
    x0: torch.Tensor  # int64 [b, L]
    masked: torch.Tensor  # bool [b, L]
    maskable: torch.Tensor  # bool [b, L]
    t: torch.Tensor  # [b]
    rows: Optional[DistilledRows] = None
    teacher_rows: Optional[torch.Tensor] = None  # [n, V_local] or full width [n, >= shared_vocab]
    student_chunk: Optional[torch.Tensor] = None  # int64 [b, L], -1 = none
    teacher_chunk: Optional[torch.Tensor] = None  # int64 [b, L_t], -1 = none
    teacher_token_logp: Optional[torch.Tensor] = None  # fp32 [b, L_t]
    active: Optional[torch.Tensor] = None  # bool [b, C]


@dataclass
class LossOutput:
    """``total = ce + sum(weighted terms)``; ``terms`` holds each unweighted component (for logging)."""

    total: torch.Tensor
    ce: torch.Tensor
    terms: dict[str, torch.Tensor] = field(default_factory=dict)


class Objective:
    """CE plus the distillation term(s) of one mode string; call it once per micro-batch."""

    def __init__(self, mode: str, components: list[ModeSpec], config: ObjectiveConfig):
        self.mode = mode
        self.components = components
        self.config = config

    @property
    def chunk_level(self) -> bool:
        return self.components[0].chunk_level

    @property
    def aligned(self) -> bool:
        return self.components[0].aligned

    def _weight(self, spec: ModeSpec) -> float:
        c = self.config
        if spec.chunk_level:
            return c.alm_weight
        return c.taid_weight if spec.term == "tidal" else c.kl_weight

    def __call__(self, inputs: LossInputs, step: int = 0, total_steps: int = 1,
                 tp_group: ProcessGroup = None) -> LossOutput:
        """Assemble the loss of §6. ``step`` is the 0-based optimizer step, ``total_steps`` the total (§9.14)."""
        logp = token_logprobs(inputs.student_logits, inputs.x0, tp_group, self.config.chunk_rows)
        ce = bd3lm_ce_from_logprobs(logp, inputs.masked, inputs.maskable, inputs.t)
        terms = {}
        total = ce
        for spec in self.components:
            term = (self._chunk_term(spec, inputs, logp, step, total_steps) if spec.chunk_level
                    else self._token_term(spec, inputs, step, total_steps, tp_group))
            terms[spec.name] = term
            total = total + self._weight(spec) * term
        return LossOutput(total=total, ce=ce, terms=terms)

    def _token_term(self, spec: ModeSpec, x: LossInputs, step: int, total_steps: int,
                    tp_group: ProcessGroup) -> torch.Tensor:
        if x.rows is None or x.teacher_rows is None:
            raise ValueError(f"mode {spec.name!r}: LossInputs.rows and LossInputs.teacher_rows are required")
        c = self.config
        n = len(x.rows)
        if x.teacher_rows.shape[0] != n:
            raise ValueError(f"mode {spec.name!r}: teacher_rows has {x.teacher_rows.shape[0]} rows, rows has {n}")
        v_local = x.student_logits.shape[-1]
        if c.shared_vocab is None and x.teacher_rows.shape[-1] != v_local:
            raise ValueError(f"mode {spec.name!r}: teacher rows have {x.teacher_rows.shape[-1]} columns and the "
                             f"student {v_local}; set shared_vocab to compare a shared id prefix")
        if c.shared_vocab is not None and x.teacher_rows.shape[-1] != v_local and \
                x.teacher_rows.shape[-1] < c.shared_vocab:
            raise ValueError(f"mode {spec.name!r}: teacher rows have {x.teacher_rows.shape[-1]} columns, fewer than "
                             f"shared_vocab={c.shared_vocab}")
        student = gather_rows(x.student_logits, x.rows.batch, x.rows.student_pos)
        teacher = teacher_rows_to_shard(x.teacher_rows.detach(), v_local, tp_group)
        if spec.term == "kl":
            return kl_loss(student, teacher, c.kl_temperature, spec.reverse, c.shared_vocab, tp_group, c.chunk_rows)
        sched = c.schedule(spec.default_timestep_weight)
        lam = sched.lam(x.t, step, total_steps)[x.rows.batch]
        omega = sched.omega(x.t)[x.rows.batch]
        return tidal_loss(student, teacher, lam, omega, c.kl_temperature, c.shared_vocab, tp_group, c.chunk_rows)

    def _chunk_term(self, spec: ModeSpec, x: LossInputs, logp: torch.Tensor, step: int,
                    total_steps: int) -> torch.Tensor:
        for name in ("student_chunk", "teacher_chunk", "teacher_token_logp", "active"):
            if getattr(x, name) is None:
                raise ValueError(f"mode {spec.name!r}: LossInputs.{name} is required")
        c = self.config
        num_chunks = x.active.shape[1]
        s_ll = chunk_loglik(logp, x.student_chunk, num_chunks)
        t_ll = chunk_loglik(x.teacher_token_logp.detach(), x.teacher_chunk, num_chunks)
        if spec.term == "calm":
            return calm_loss(s_ll, t_ll, x.active, c.alm_temperature, spec.reverse)
        sched = c.schedule(spec.default_timestep_weight)
        return chunk_tidal_loss(s_ll, t_ll, x.active, sched.lam(x.t, step, total_steps), sched.omega(x.t),
                                c.alm_temperature, spec.reverse)


def build_objective(mode: str, config: ObjectiveConfig = ObjectiveConfig()) -> Objective:
    """Parse and validate a mode string (``name`` or ``a+b``) into an ``Objective``.

    Raises ``ValueError`` naming the valid modes for an unknown one, for composing ALM modes, for mixing
    aligned and unaligned token modes, and for bad config values. Warns for TIDAL with a reverse objective.
    """
    if not isinstance(mode, str) or not mode.strip():
        raise ValueError(f"mode must be a non-empty string; valid modes: {', '.join(MODES)} "
                         "or token modes joined by '+'")
    names = [part.strip() for part in mode.split("+")]
    for name in names:
        if name not in MODES:
            raise ValueError(f"unknown mode {name!r} in {mode!r}; valid modes: {', '.join(MODES)} "
                             "(token modes may be composed as 'a+b')")
    if len(set(names)) != len(names):
        raise ValueError(f"mode {mode!r}: a component appears twice")
    components = [MODES[n] for n in names]
    if len(components) > 1:
        chunk = [c.name for c in components if c.chunk_level]
        if chunk:
            raise ValueError(f"mode {mode!r}: ALM modes ({', '.join(chunk)}) cannot be composed with '+'")
        if len({c.aligned for c in components}) > 1:
            raise ValueError(f"mode {mode!r}: aligned and unaligned token modes use different positions; "
                             "compose only *_aligned modes or only unaligned ones")
    config.validate()
    if any(c.uses_tidal for c in components) and any(c.reverse for c in components):
        warnings.warn(f"mode {mode!r}: {REVERSE_TIDAL_WARNING}", UserWarning, stacklevel=2)
    return Objective(mode, components, config)


def valid_modes() -> list[str]:
    """The catalogue's mode names (composites of token modes are also accepted)."""
    return list(MODES)


__all__ = ["MODES", "ModeSpec", "ObjectiveConfig", "LossInputs", "LossOutput", "Objective", "build_objective",
           "valid_modes", "QWEN3_SHARED_VOCAB"]

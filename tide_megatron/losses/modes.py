"""The TIDE objective: the mode catalogue of spec §6, its hyperparameters, and the loss it assembles.

Token modes (Pipeline B) compare logit rows at the distilled positions (``*_aligned``: pairs of §2.4;
plain ``kl``/``reverse_kl``/``taid``: every masked position). Chunk modes (Pipeline A) compare chunk
log-likelihoods (§5). ``x+y`` composes token modes: CE once plus each component's weighted term; the
ALM modes cannot be composed. ``ce`` is the BD3LM CE alone (the baseline of §8).
``L = L_CE + sum_components weight * term``. `ObjectiveConfig` is the ``objective:`` section of a run.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field, replace
from typing import Optional

import torch

from tide_megatron.align.rows import DistilledRows
from tide_megatron.distributed.vocab_parallel import ProcessGroup
from tide_megatron.errors import ConfigError, require
from tide_megatron.losses.calm import calm_loss, chunk_loglik, chunk_tidal_loss
from tide_megatron.losses.ce import bd3lm_ce_from_logprobs
from tide_megatron.losses.kl import kl_loss
from tide_megatron.losses.rows import gather_rows, teacher_rows_to_shard
from tide_megatron.losses.tidal import AXIS_MODES, DECAYS, TIMESTEP_WEIGHTS, TidalSchedule, tidal_loss
from tide_megatron.losses.vocab_parallel import token_logprobs

QWEN3_SHARED_VOCAB = 151646  # ids [0, 151646): regular BPE plus <|endoftext|>, <|im_start|>, <|im_end|> (§2.2)
CE_ONLY_MODE = "ce"  # BD3LM fine-tuning with no teacher term (§8)


@dataclass(frozen=True)
class ModeSpec:
    """One catalogue entry: the term it adds, its direction and where its inputs come from."""

    name: str
    term: str  # "kl" | "tidal" | "calm" | "chunk_tidal"
    reverse: bool
    aligned: bool  # token modes: K from alignment pairs (True) or all masked positions (False)
    pipeline: str
    paper_name: str
    default_timestep_weight: str = "uniform"  # ω(t) of the paper recipe when objective.timestep_weight is unset

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
CHUNK_LEVEL_MODES = tuple(name for name, spec in MODES.items() if spec.chunk_level)

REVERSE_TIDAL_WARNING = (
    "TIDAL with a reverse objective: the target mixes (1-lambda)*student into the teacher, and lambda grows "
    "to lambda_max late in training, so the student's self-selection gate s is weakened exactly when the "
    "teacher should dominate; the TIDE README advises against it (spec §5.8). Allowed, but check the ablation."
)


def parse_mode(mode: str) -> list[ModeSpec]:
    """The catalogue entries of a mode string (``name`` or token modes ``a+b``); ``ce`` has none.

    Raises `ConfigError` naming ``objective.mode`` for an unknown mode, for composing ALM modes or ``ce``,
    for a repeated component and for mixing aligned and unaligned token modes (spec §6).
    """
    valid = (f"one of the valid modes: {', '.join(MODES)}, '{CE_ONLY_MODE}' (CE only), or token modes joined "
             f"by '+'")
    if not isinstance(mode, str) or not mode.strip():
        raise ConfigError(f"objective.mode: expected {valid}; got {mode!r}")
    names = [part.strip() for part in mode.split("+")]
    if names == [CE_ONLY_MODE]:
        return []
    if CE_ONLY_MODE in names:
        raise ConfigError(f"objective.mode: '{CE_ONLY_MODE}' is already part of every mode, got {mode!r}")
    unknown = [name for name in names if name not in MODES]
    if unknown:
        raise ConfigError(f"objective.mode: expected {valid}; got {mode!r} (unknown {unknown[0]!r})")
    if len(set(names)) != len(names):
        raise ConfigError(f"objective.mode: a component appears twice in {mode!r}")
    components = [MODES[n] for n in names]
    if len(components) > 1:
        chunk = [c.name for c in components if c.chunk_level]
        if chunk:
            raise ConfigError(f"objective.mode: ALM modes cannot be composed with '+' (spec §6); {mode!r} "
                              f"contains {', '.join(chunk)}")
        if len({c.aligned for c in components}) > 1:
            raise ConfigError(f"objective.mode: {mode!r} mixes aligned and unaligned token modes, which use "
                              "different positions; compose only *_aligned modes or only unaligned ones")
    return components


@dataclass(frozen=True)
class ObjectiveConfig:
    """The TIDE objective (spec §1.5, §3-§6): ``L = L_CE + sum_components weight * term``.

    The ``objective:`` section of a training config; defaults are the paper's (§7.1, §9.20), and every
    field is validated here, once, with errors naming ``objective.<field>``.
    """

    mode: str = "reverse_alm"  # see MODES; token modes compose as 'a+b'; 'ce' = no teacher term
    kl_weight: float = 1.0  # weight of a KL term (kl*, reverse_kl*)
    taid_weight: float = 1.0  # weight of a token TIDAL term (taid*)
    alm_weight: float = 1.0  # weight of a chunk term (alm, reverse_alm, alm_taid, reverse_alm_taid)
    kl_temperature: float = 2.0  # T of KL and token TIDAL, with T^2 scaling (§3, §6)
    alm_temperature: float = 5.0  # T_alm of CALM and chunk TIDAL (the launch script's 5.0; §5.6, §10)
    lambda_init: float = 0.1  # TIDAL λ0 (§3.1)
    lambda_max: float = 0.9  # TIDAL λ1
    lambda_schedule: str = "cosine"  # g(ρ): cosine | linear
    axis_mode: str = "both"  # both | training_only | timestep_only (§3.2)
    timestep_weight: Optional[str] = None  # ω(t): uniform | midrange; None = the mode's recipe (§3.5, §5.8)
    compdemo: bool = False  # complementary demonstration teacher passes (§4)
    demo_ratio: float = 0.5  # ρ_d of the CompDemo split
    time_epsilon: float = 1e-3  # t = eps + (1 - eps) u (§1.3)
    shared_vocab: Optional[int] = QWEN3_SHARED_VOCAB  # token modes compare ids below this (§2.2, §9.1); None = all
    chunk_rows: Optional[int] = None  # rows per fp32 chunk in the losses (memory bound); None = automatic

    def __post_init__(self) -> None:
        components = parse_mode(self.mode)
        for name in ("kl_weight", "taid_weight", "alm_weight"):
            require(getattr(self, name) >= 0, f"objective.{name}", ">= 0", getattr(self, name))
        for name in ("kl_temperature", "alm_temperature"):
            require(getattr(self, name) > 0, f"objective.{name}", "> 0", getattr(self, name))
        for name in ("lambda_init", "lambda_max"):
            require(0.0 <= getattr(self, name) <= 1.0, f"objective.{name}", "a value in [0, 1]", getattr(self, name))
        require(self.lambda_schedule in DECAYS, "objective.lambda_schedule", "|".join(DECAYS), self.lambda_schedule)
        require(self.axis_mode in AXIS_MODES, "objective.axis_mode", "|".join(AXIS_MODES), self.axis_mode)
        require(self.timestep_weight is None or self.timestep_weight in TIMESTEP_WEIGHTS, "objective.timestep_weight",
                "|".join(TIMESTEP_WEIGHTS) + " or null (the mode's recipe)", self.timestep_weight)
        require(0.0 < self.demo_ratio < 1.0, "objective.demo_ratio", "a value in (0, 1)", self.demo_ratio)
        require(0.0 < self.time_epsilon < 1.0, "objective.time_epsilon", "a value in (0, 1)", self.time_epsilon)
        require(self.shared_vocab is None or self.shared_vocab >= 1, "objective.shared_vocab",
                "an id count >= 1 or null (no cut)", self.shared_vocab)
        require(self.chunk_rows is None or self.chunk_rows >= 1, "objective.chunk_rows",
                "an integer >= 1 or null (automatic)", self.chunk_rows)
        if self.compdemo and not components:
            raise ConfigError(f"objective.compdemo: CompDemo needs a teacher term; mode {self.mode!r} has none")

    @property
    def components(self) -> list[ModeSpec]:
        """The catalogue entries of ``mode`` (empty for ``ce``)."""
        return parse_mode(self.mode)

    @property
    def needs_teacher(self) -> bool:
        return bool(self.components)

    @property
    def chunk_level(self) -> bool:
        """Chunk modes (Pipeline A, §5) compare chunk log-likelihoods, across different tokenizers."""
        return any(c.chunk_level for c in self.components)

    @property
    def unaligned_tokens(self) -> bool:
        """The unaligned token modes (kl / reverse_kl / taid, §6): every masked position, the teacher on the
        student's own sequence."""
        return self.needs_teacher and not self.chunk_level and not self.components[0].aligned

    def weight(self, spec: ModeSpec) -> float:
        """The weight of one component's term (§9.20: all 1.0 in the paper)."""
        if spec.chunk_level:
            return self.alm_weight
        return self.taid_weight if spec.term == "tidal" else self.kl_weight

    def schedule(self, spec: ModeSpec) -> TidalSchedule:
        """The TIDAL schedule of a component; ω(t) is the mode's recipe unless ``timestep_weight`` is set."""
        return TidalSchedule(self.lambda_init, self.lambda_max, self.lambda_schedule, self.axis_mode,
                             self.timestep_weight or spec.default_timestep_weight)


@dataclass
class LossInputs:
    """Everything a step hands to the objective (batch-first; see docs/ARCHITECTURE.md).

    Token modes need ``rows`` (distilled positions) and ``teacher_rows`` (teacher logits at them, already
    CompDemo-merged). Chunk modes need the sparse chunk ids, the teacher's per-token log-probs and ``active``.
    ``masked`` is the (chunk-expanded in Pipeline A) student mask; it feeds the CE.
    """

    student_logits: torch.Tensor  # [b, L, V_local], or packed [n, V_local] at ``student_rows``
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
    # Packed student logits: int64 [n, 2] (sequence, position) of each row of student_logits [n, V_local]; the
    # rows no term reads may be left out (the chunked head computes only masked rows). None: logits are [b, L, V].
    student_rows: Optional[torch.Tensor] = None


def rows_read(inputs: LossInputs) -> torch.Tensor:
    """bool ``[b, L]``: the student rows some term reads. CE reads the masked rows (the others are weighted 0),
    the token terms their distilled rows, the chunk terms the tokens of active chunks; every other row's
    logits get a zero gradient, so the output layer can leave them out."""
    read = inputs.masked.clone()
    if inputs.rows is not None:
        read[inputs.rows.batch, inputs.rows.student_pos] = True
    if inputs.active is not None and inputs.student_chunk is not None and inputs.active.shape[1]:
        chunk = inputs.student_chunk
        read |= (chunk >= 0) & inputs.active.gather(1, chunk.clamp_min(0))
    return read


def student_token_logprobs(x: LossInputs, tp_group: ProcessGroup = None,
                           chunk_rows: Optional[int] = None) -> torch.Tensor:
    """fp32 ``[b, L]`` log p(x0) under the student; with packed logits, 0 at the positions not computed (every
    term reads them through ``masked`` or ``active``, which the packed rows cover)."""
    if x.student_rows is None:
        return token_logprobs(x.student_logits, x.x0, tp_group, chunk_rows)
    seq, pos = x.student_rows.unbind(1)
    rows = token_logprobs(x.student_logits, x.x0[seq, pos], tp_group, chunk_rows)
    return rows.new_zeros(x.x0.shape).index_put((seq, pos), rows)


def student_logit_rows(x: LossInputs, batch: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """Student logit rows ``[n, V_local]`` at (``batch``, ``pos``), from full or packed logits (differentiable)."""
    if x.student_rows is None:
        return gather_rows(x.student_logits, batch, pos)
    seq, spos = x.student_rows.unbind(1)
    if seq.shape == batch.shape and torch.equal(seq, batch) and torch.equal(spos, pos):
        return x.student_logits  # the packed rows are exactly the requested ones: no copy
    where = torch.full(x.x0.shape, -1, dtype=torch.long, device=seq.device)
    where[seq, spos] = torch.arange(seq.numel(), device=seq.device)
    index = where[batch, pos]
    if index.numel() and bool((index < 0).any()):
        raise ValueError("LossInputs.student_rows: a distilled row was not computed (the packed student logits "
                         "must cover every row in LossInputs.rows)")
    return x.student_logits.index_select(0, index)


@dataclass
class LossOutput:
    """``total = ce + sum(weighted terms)``; ``terms`` holds each unweighted component (for logging)."""

    total: torch.Tensor
    ce: torch.Tensor
    terms: dict[str, torch.Tensor] = field(default_factory=dict)


class Objective:
    """CE plus the distillation term(s) of one validated `ObjectiveConfig`; call it once per micro-batch."""

    def __init__(self, config: ObjectiveConfig):
        self.config = config
        self.mode = config.mode
        self.components = config.components

    @property
    def chunk_level(self) -> bool:
        return self.components[0].chunk_level

    @property
    def aligned(self) -> bool:
        return self.components[0].aligned

    def __call__(self, inputs: LossInputs, step: int = 0, total_steps: int = 1,
                 tp_group: ProcessGroup = None) -> LossOutput:
        """Assemble the loss of §6. ``step`` is the 0-based optimizer step, ``total_steps`` the total (§9.14)."""
        c = self.config
        logp = student_token_logprobs(inputs, tp_group, c.chunk_rows)
        ce = bd3lm_ce_from_logprobs(logp, inputs.masked, inputs.maskable, inputs.t)
        terms = {}
        total = ce
        for spec in self.components:
            term = (self._chunk_term(spec, inputs, logp, step, total_steps) if spec.chunk_level
                    else self._token_term(spec, inputs, step, total_steps, tp_group))
            terms[spec.name] = term
            total = total + c.weight(spec) * term
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
        student = student_logit_rows(x, x.rows.batch, x.rows.student_pos)
        teacher = teacher_rows_to_shard(x.teacher_rows.detach(), v_local, tp_group)
        if spec.term == "kl":
            return kl_loss(student, teacher, c.kl_temperature, spec.reverse, c.shared_vocab, tp_group, c.chunk_rows)
        sched = c.schedule(spec)
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
        sched = c.schedule(spec)
        return chunk_tidal_loss(s_ll, t_ll, x.active, sched.lam(x.t, step, total_steps), sched.omega(x.t),
                                c.alm_temperature, spec.reverse)


def build_objective(mode: str, config: ObjectiveConfig = ObjectiveConfig()) -> Objective:
    """The `Objective` of ``mode`` (``name`` or ``a+b``) with the hyperparameters of ``config``.

    Raises `ConfigError` (a ``ValueError``) as `parse_mode` and `ObjectiveConfig` do; warns for TIDAL with a
    reverse objective (§5.8); ``ce`` has no teacher term and no `Objective`.
    """
    config = replace(config, mode=mode)  # validated again with this mode
    if not config.components:
        raise ConfigError(f"objective.mode: {mode!r} has no distillation term; use losses.bd3lm_ce alone")
    if any(c.uses_tidal for c in config.components) and any(c.reverse for c in config.components):
        warnings.warn(f"mode {mode!r}: {REVERSE_TIDAL_WARNING}", UserWarning, stacklevel=2)
    return Objective(config)


__all__ = ["CE_ONLY_MODE", "CHUNK_LEVEL_MODES", "MODES", "ModeSpec", "ObjectiveConfig", "LossInputs", "LossOutput",
           "Objective", "build_objective", "parse_mode", "QWEN3_SHARED_VOCAB"]

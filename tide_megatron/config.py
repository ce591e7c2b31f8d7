"""Training configuration: one dataclass per concern, YAML files, dotted ``key=value`` overrides.

`load_config(path, overrides)` reads a YAML file whose top-level keys are the sections below
(``teacher``, ``student``, ``data``, ``optim``, ``objective``, ``checkpoint``, ``logging``,
``precision``), optionally starting from one of the six paper presets (``preset: a_tide_cross`` ...),
then applies overrides such as ``optim.lr=1e-4``. Every section validates itself in ``__post_init__``
and names the offending field; `TrainConfig.check_world_size` checks the layouts against the job.
Hyperparameters follow spec §7.1; modes follow spec §6.
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import dataclasses
import json
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from tide_megatron.distributed.grids import ParallelLayout


class ConfigError(ValueError):
    """A configuration value is missing, of the wrong type or inconsistent; the message names it."""


_CHECK_PATHS: contextvars.ContextVar[bool] = contextvars.ContextVar("tide_check_paths", default=True)


@contextlib.contextmanager
def paths_unchecked():
    """Build configs without requiring their files to exist (inspecting full-scale examples)."""
    token = _CHECK_PATHS.set(False)
    try:
        yield
    finally:
        _CHECK_PATHS.reset(token)


def _require(cond: bool, name: str, expected: str, got: Any) -> None:
    if not cond:
        raise ConfigError(f"{name}: expected {expected}, got {got!r}")


def _require_path(path: Optional[str], name: str, kind: str = "file or directory") -> None:
    """A configured path must exist (checked before any work is done)."""
    if path and _CHECK_PATHS.get() and not Path(path).exists():
        raise ConfigError(f"{name}: {kind} {path!r} does not exist")


# --------------------------------------------------------------------------------------------------
# Objective: modes and their pipelines (spec §6)
# --------------------------------------------------------------------------------------------------

#: Modes that compare logits position by position: they need the student and teacher to share a tokenizer.
TOKEN_LEVEL_MODES = ("kl", "reverse_kl", "taid", "kl_aligned", "reverse_kl_aligned", "taid_aligned")
#: Modes over byte-aligned chunks (spec §5): they work across different tokenizers.
CHUNK_LEVEL_MODES = ("alm", "reverse_alm", "alm_taid", "reverse_alm_taid")
#: Plain BD3LM fine-tuning with no teacher term (the baseline of spec §8).
CE_ONLY_MODE = "ce"
ALL_MODES = (CE_ONLY_MODE,) + TOKEN_LEVEL_MODES + CHUNK_LEVEL_MODES


def mode_components(mode: str) -> list[str]:
    """Split a composite mode ``x+y`` into its parts (spec §6: ALM modes cannot be composed)."""
    return [m.strip() for m in mode.split("+")]


def is_chunk_mode(mode: str) -> bool:
    return any(m in CHUNK_LEVEL_MODES for m in mode_components(mode))


def is_tidal_mode(mode: str) -> bool:
    return any(m in ("taid", "taid_aligned", "alm_taid", "reverse_alm_taid") for m in mode_components(mode))


@dataclass
class ObjectiveConfig:
    """The TIDE objective (spec §1.5, §3-§6): L = L_CE + weight * distillation term."""

    mode: str = "reverse_alm"
    distill_weight: float = 1.0  # alm_weight / kl_weight / taid_weight: all 1.0 in the paper (§9.20)
    kl_temperature: float = 2.0  # T for KL and TIDAL (T^2 scaling applies)
    alm_temperature: float = 5.0  # T_alm for CALM / Reverse CALM / chunk-TIDAL (§5.6, script value)
    lambda_init: float = 0.1  # TIDAL λ0
    lambda_max: float = 0.9  # TIDAL λ1
    lambda_schedule: str = "cosine"  # g(ρ): cosine | linear
    axis_mode: str = "both"  # both | training_only | timestep_only
    timestep_weight: str = "uniform"  # ω(t): uniform | midrange
    compdemo: bool = False  # complementary demonstration teacher passes (§4)
    demo_ratio: float = 0.5
    time_epsilon: float = 1e-3  # t = eps + (1 - eps) u (§1.3)
    shared_vocab: int = 151646  # token modes compare ids [0, shared_vocab) on both sides (§2.2, §9.1)
    chunk_rows: int = 0  # rows per fp32 chunk in KL/TIDAL (0 = automatic)

    def __post_init__(self) -> None:
        parts = mode_components(self.mode)
        for part in parts:
            _require(part in ALL_MODES, "objective.mode", f"one of {', '.join(ALL_MODES)} or 'x+y'", self.mode)
        if len(parts) > 1 and any(p in CHUNK_LEVEL_MODES for p in parts):
            raise ConfigError(f"objective.mode: ALM modes cannot be composed (spec §6), got {self.mode!r}")
        if len(parts) > 1 and CE_ONLY_MODE in parts:
            raise ConfigError(f"objective.mode: 'ce' is already part of every mode, got {self.mode!r}")
        _require(self.lambda_schedule in ("cosine", "linear"), "objective.lambda_schedule", "cosine|linear",
                 self.lambda_schedule)
        _require(self.axis_mode in ("both", "training_only", "timestep_only"), "objective.axis_mode",
                 "both|training_only|timestep_only", self.axis_mode)
        _require(self.timestep_weight in ("uniform", "midrange"), "objective.timestep_weight", "uniform|midrange",
                 self.timestep_weight)
        _require(0.0 < self.demo_ratio < 1.0, "objective.demo_ratio", "a value in (0, 1)", self.demo_ratio)
        _require(self.kl_temperature > 0, "objective.kl_temperature", "> 0", self.kl_temperature)
        _require(self.alm_temperature > 0, "objective.alm_temperature", "> 0", self.alm_temperature)
        _require(0.0 <= self.lambda_init <= 1.0 and 0.0 <= self.lambda_max <= 1.0, "objective.lambda_init/max",
                 "values in [0, 1]", (self.lambda_init, self.lambda_max))
        _require(self.shared_vocab >= 1, "objective.shared_vocab", "an integer >= 1", self.shared_vocab)
        _require(self.chunk_rows >= 0, "objective.chunk_rows", "an integer >= 0", self.chunk_rows)
        _require(0.0 < self.time_epsilon < 1.0, "objective.time_epsilon", "a value in (0, 1)", self.time_epsilon)
        if self.compdemo and self.mode == CE_ONLY_MODE:
            raise ConfigError("objective.compdemo: CompDemo needs a teacher term; mode 'ce' has none")

    @property
    def needs_teacher(self) -> bool:
        return self.mode != CE_ONLY_MODE


# --------------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------------

TEACHER_ARCHS = ("llada2", "wedlm")


@dataclass
class TeacherConfig:
    """The teacher checkpoint and its layout on the teacher grid (spec §2; DESIGN §2)."""

    arch: str = "llada2"  # llada2 (pipeline A, MoE, bidirectional) | wedlm (pipeline B, Qwen3 layout, [x0 ; xt])
    checkpoint: str = ""  # HF directory (config.json + safetensors) or a megatron dist checkpoint
    tokenizer: str = ""  # defaults to the checkpoint directory
    tp: int = 1
    pp: int = 1
    ep: int = 1
    etp: int = 1
    dtype: str = "bf16"  # bf16 | fp32 (inference only, no gradients)
    max_length: int = 1024  # 1024 for LLaDA2 (§2.3), 768 for WeDLM (§2.4)
    mask_id: Optional[int] = None  # None: read from the checkpoint / tokenizer
    # MoE kernels (LLaDA2; models/moe_kernels.py): None = on with Transformer Engine, off on the local backend.
    moe_grouped_gemm: Optional[bool] = None
    moe_permute_fusion: Optional[bool] = None
    moe_dispatcher: str = "alltoall"  # alltoall | allgather

    def __post_init__(self) -> None:
        _require(self.arch in TEACHER_ARCHS, "teacher.arch", "|".join(TEACHER_ARCHS), self.arch)
        _require(self.dtype in ("bf16", "fp32"), "teacher.dtype", "bf16|fp32", self.dtype)
        for name in ("tp", "pp", "ep", "etp", "max_length"):
            _require(isinstance(getattr(self, name), int) and getattr(self, name) >= 1, f"teacher.{name}",
                     "an integer >= 1", getattr(self, name))
        if self.arch == "wedlm" and (self.ep != 1 or self.etp != 1):
            raise ConfigError(f"teacher.ep: the dense WeDLM teacher has no experts; expected ep=1, etp=1, "
                              f"got ep={self.ep}, etp={self.etp}")
        _require_path(self.checkpoint, "teacher.checkpoint")
        _require_path(self.tokenizer, "teacher.tokenizer")

    @property
    def layout(self) -> ParallelLayout:
        return ParallelLayout(tp=self.tp, pp=self.pp, ep=self.ep, etp=self.etp)

    @property
    def tokenizer_path(self) -> str:
        return self.tokenizer or self.checkpoint


@dataclass
class StudentConfig:
    """The BD3LM student (spec §1): checkpoint, tokenizer and its data-parallel layout."""

    checkpoint: str = ""  # HF Qwen3 directory or a megatron dist checkpoint
    tokenizer: str = ""  # defaults to the checkpoint directory
    tp: int = 1
    seq_length: int = 512  # L (§1.2)
    block_size: int = 32  # B (§1.4)
    mask_id: Optional[int] = None  # None: the tokenizer's mask token (§1.1, ≈151669)
    recompute: bool = False  # full activation recomputation for large micro-batches
    logits_chunk_seqs: int = 1  # sequences per output-layer + loss group (0 = the whole micro-batch at once, §9.21)
    skip_unmasked_blocks: bool = True  # leave out xt blocks without a masked token and the x0 blocks after them

    def __post_init__(self) -> None:
        _require(self.tp >= 1, "student.tp", "an integer >= 1", self.tp)
        _require(self.block_size >= 1, "student.block_size", "an integer >= 1", self.block_size)
        _require(self.logits_chunk_seqs >= 0, "student.logits_chunk_seqs", "an integer >= 0", self.logits_chunk_seqs)
        if self.seq_length % self.block_size:
            raise ConfigError(f"student.seq_length: {self.seq_length} is not a multiple of student.block_size "
                              f"{self.block_size} (spec §9.6)")
        _require_path(self.checkpoint, "student.checkpoint")
        _require_path(self.tokenizer, "student.tokenizer")

    @property
    def layout(self) -> ParallelLayout:
        return ParallelLayout(tp=self.tp)

    @property
    def tokenizer_path(self) -> str:
        return self.tokenizer or self.checkpoint


# --------------------------------------------------------------------------------------------------
# Data, optimisation, checkpoints, logging, precision
# --------------------------------------------------------------------------------------------------


@dataclass
class DataConfig:
    """Preprocessed indexed datasets (written by ``tide-preprocess``) and the loader."""

    train: str = ""  # dataset path prefix
    valid: str = ""  # held-out dataset prefix ("" = no held-out evaluation)
    micro_batch_size: int = 8  # per data-parallel rank (8 in A, 10 in B: §7.1)
    num_workers: int = 2  # DataLoader workers run the alignment stage
    prefetch_factor: int = 2
    shuffle: bool = True

    def __post_init__(self) -> None:
        _require(self.micro_batch_size >= 1, "data.micro_batch_size", "an integer >= 1", self.micro_batch_size)
        _require(self.num_workers >= 0, "data.num_workers", "an integer >= 0", self.num_workers)
        _require(self.prefetch_factor >= 1, "data.prefetch_factor", "an integer >= 1", self.prefetch_factor)
        for name in ("train", "valid"):
            prefix = getattr(self, name)
            if prefix and _CHECK_PATHS.get() and not _dataset_exists(prefix):
                raise ConfigError(f"data.{name}: no dataset at {prefix!r} (expected {prefix}.bin and {prefix}.idx, "
                                  f"or a directory written by tide-preprocess)")


def _dataset_exists(prefix: str) -> bool:
    p = Path(prefix)
    return p.is_dir() or (Path(prefix + ".bin").exists() and Path(prefix + ".idx").exists()) or p.exists()


@dataclass
class OptimConfig:
    """AdamW + cosine LR with warmup + clipping (spec §7.1; HF Trainer defaults)."""

    lr: float = 5e-5
    min_lr: float = 0.0
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    clip_grad: float = 1.0
    warmup_ratio: float = 0.1
    lr_schedule: str = "cosine"  # cosine | linear | constant
    epochs: float = 2.0
    train_steps: int = 0  # optimizer steps; 0 = epochs x steps per epoch
    grad_accum: int = 1  # micro-batches per optimizer step
    seed: int = 42

    def __post_init__(self) -> None:
        _require(self.lr > 0, "optim.lr", "> 0", self.lr)
        _require(0 <= self.min_lr <= self.lr, "optim.min_lr", f"a value in [0, optim.lr={self.lr}]", self.min_lr)
        _require(0.0 <= self.warmup_ratio < 1.0, "optim.warmup_ratio", "a value in [0, 1)", self.warmup_ratio)
        _require(self.lr_schedule in ("cosine", "linear", "constant"), "optim.lr_schedule",
                 "cosine|linear|constant", self.lr_schedule)
        _require(self.epochs > 0, "optim.epochs", "> 0", self.epochs)
        _require(self.train_steps >= 0, "optim.train_steps", "an integer >= 0", self.train_steps)
        _require(self.grad_accum >= 1, "optim.grad_accum", "an integer >= 1", self.grad_accum)
        _require(self.clip_grad >= 0, "optim.clip_grad", ">= 0 (0 disables clipping)", self.clip_grad)
        _require(0 <= self.adam_beta1 < 1 and 0 <= self.adam_beta2 < 1, "optim.adam_beta1/2", "values in [0, 1)",
                 (self.adam_beta1, self.adam_beta2))


@dataclass
class CheckpointConfig:
    """Atomic megatron-core dist checkpoints (DESIGN §1)."""

    dir: str = ""  # default: <output_dir>/checkpoints
    save_interval: int = 10000  # optimizer steps (HF save_steps, §7.1)
    keep_last: int = 2
    resume: str = "auto"  # auto (latest in dir, if any) | none | a checkpoint directory
    save_on_signal: bool = True  # SIGTERM / SIGUSR1: checkpoint, then exit 0
    save_at_end: bool = True

    def __post_init__(self) -> None:
        _require(self.save_interval >= 1, "checkpoint.save_interval", "an integer >= 1", self.save_interval)
        _require(self.keep_last >= 1, "checkpoint.keep_last", "an integer >= 1", self.keep_last)
        if self.resume not in ("auto", "none"):
            _require_path(self.resume, "checkpoint.resume", "checkpoint directory")


@dataclass
class LoggingConfig:
    """TensorBoard scalars and the console progress line."""

    dir: str = ""  # default: <output_dir>/tensorboard
    log_interval: int = 10  # HF logging_steps (§7.1)
    tensorboard: bool = True
    eval_interval: int = 0  # optimizer steps between held-out evaluations (0 = only at the end)
    eval_batches: int = 8

    def __post_init__(self) -> None:
        _require(self.log_interval >= 1, "logging.log_interval", "an integer >= 1", self.log_interval)
        _require(self.eval_interval >= 0, "logging.eval_interval", "an integer >= 0", self.eval_interval)
        _require(self.eval_batches >= 1, "logging.eval_batches", "an integer >= 1", self.eval_batches)


@dataclass
class PrecisionConfig:
    """Student compute precision; FP8 (Transformer Engine, GPU only) behind a flag."""

    dtype: str = "bf16"  # bf16 | fp32; master weights and optimizer state are fp32 either way (§9.23)
    fp8: bool = False
    fp8_format: str = "hybrid"  # hybrid (E4M3 forward, E5M2 backward) | e4m3
    fp8_recipe: str = "delayed"  # delayed | tensorwise
    fp8_amax_history_len: int = 1024
    fp8_amax_compute_algo: str = "max"

    def __post_init__(self) -> None:
        _require(self.dtype in ("bf16", "fp32"), "precision.dtype", "bf16|fp32", self.dtype)
        _require(self.fp8_format in ("hybrid", "e4m3"), "precision.fp8_format", "hybrid|e4m3", self.fp8_format)
        _require(self.fp8_recipe in ("delayed", "tensorwise"), "precision.fp8_recipe", "delayed|tensorwise",
                 self.fp8_recipe)
        _require(self.fp8_amax_compute_algo in ("max", "most_recent"), "precision.fp8_amax_compute_algo",
                 "max|most_recent", self.fp8_amax_compute_algo)
        if self.fp8 and self.dtype != "bf16":
            raise ConfigError("precision.fp8: FP8 runs on top of bf16 compute; set precision.dtype=bf16")


# --------------------------------------------------------------------------------------------------
# The whole run
# --------------------------------------------------------------------------------------------------

SECTIONS = {
    "teacher": TeacherConfig,
    "student": StudentConfig,
    "data": DataConfig,
    "optim": OptimConfig,
    "objective": ObjectiveConfig,
    "checkpoint": CheckpointConfig,
    "logging": LoggingConfig,
    "precision": PrecisionConfig,
}


@dataclass
class TrainConfig:
    """Everything `tide-train` needs; the sections are validated on construction."""

    name: str = "tide"
    output_dir: str = "runs/tide"
    preset: str = ""
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    precision: PrecisionConfig = field(default_factory=PrecisionConfig)

    def __post_init__(self) -> None:
        _require(bool(self.output_dir), "output_dir", "a directory path", self.output_dir)
        if not self.checkpoint.dir:
            self.checkpoint.dir = os.path.join(self.output_dir, "checkpoints")
        if not self.logging.dir:
            self.logging.dir = os.path.join(self.output_dir, "tensorboard")
        if self.objective.needs_teacher and _CHECK_PATHS.get():
            _require(bool(self.teacher.checkpoint), "teacher.checkpoint",
                     f"a checkpoint path (objective.mode={self.objective.mode!r} needs a teacher)", "")
        if _CHECK_PATHS.get():
            _require(bool(self.student.checkpoint), "student.checkpoint", "a checkpoint path", "")
        self._check_mode_against_tokenizers()
        self._check_tokenizers_against_dataset()

    # -- cross-section checks ------------------------------------------------------------------------

    def _check_mode_against_tokenizers(self) -> None:
        """Token-level modes compare logits position by position: they need one shared tokenizer (§6)."""
        if not self.objective.needs_teacher or is_chunk_mode(self.objective.mode):
            return
        if self.teacher.arch == "llada2":
            raise ConfigError(
                f"objective.mode: {self.objective.mode!r} is token-level and needs a teacher that shares the "
                f"student's tokenizer (pipeline B); the llada2 teacher has a different tokenizer: use a chunk "
                f"mode ({', '.join(CHUNK_LEVEL_MODES)})")
        s_tok, t_tok = self.student.tokenizer_path, self.teacher.tokenizer_path
        if _CHECK_PATHS.get() and s_tok and t_tok:
            s_id, t_id = tokenizer_fingerprint(s_tok), tokenizer_fingerprint(t_tok)
            if s_id is not None and t_id is not None and s_id != t_id:
                raise ConfigError(
                    f"objective.mode: {self.objective.mode!r} is token-level but student.tokenizer {s_tok!r} and "
                    f"teacher.tokenizer {t_tok!r} differ; use a chunk mode ({', '.join(CHUNK_LEVEL_MODES)})")

    def _check_tokenizers_against_dataset(self) -> None:
        """The dataset (tide-preprocess meta.json) must have been written for these tokenizers, this mode and L."""
        if not (_CHECK_PATHS.get() and self.data.train):
            return
        meta = read_dataset_meta(self.data.train)
        if meta is None:
            return
        where = f"data.train {self.data.train!r}"
        dcfg = meta.get("config", {})
        if self.objective.needs_teacher and dcfg.get("align"):
            wanted = "chunks" if is_chunk_mode(self.objective.mode) else "pairs"
            if dcfg["align"] != wanted:
                raise ConfigError(f"objective.mode: {self.objective.mode!r} needs a dataset aligned by {wanted}, but "
                                  f"{where} was preprocessed with --align {dcfg['align']}")
        if dcfg.get("student_max_len") not in (None, self.student.seq_length):
            raise ConfigError(f"student.seq_length: {self.student.seq_length} differs from the dataset's "
                              f"student_max_len {dcfg['student_max_len']} ({where})")
        sides = [("student", self.student)] + ([("teacher", self.teacher)] if self.objective.needs_teacher else [])
        for side, cfg in sides:
            recorded = dcfg.get(f"{side}_tokenizer")
            if recorded and cfg.tokenizer_path and not same_tokenizer(recorded, cfg.tokenizer_path):
                raise ConfigError(f"{side}.tokenizer: {cfg.tokenizer_path!r} is not the tokenizer that wrote {where} "
                                  f"(the dataset records {recorded!r})")
        if self.objective.needs_teacher and not is_chunk_mode(self.objective.mode):
            s_tok, t_tok = dcfg.get("student_tokenizer"), dcfg.get("teacher_tokenizer")
            if s_tok and t_tok and not same_tokenizer(s_tok, t_tok):
                raise ConfigError(f"objective.mode: {self.objective.mode!r} is token-level, but {where} pairs two "
                                  f"different tokenizers ({s_tok!r}, {t_tok!r}); use a chunk mode")

    def check_world_size(self, world_size: int) -> tuple[int, int]:
        """Teacher and student data-parallel sizes; a clear error when a layout does not divide the world."""
        try:
            teacher_dp = self.teacher.layout.data_parallel_size(world_size, "teacher") \
                if self.objective.needs_teacher else world_size
            student_dp = self.student.layout.data_parallel_size(world_size, "student")
        except ValueError as err:
            raise ConfigError(str(err)) from None
        return teacher_dp, student_dp

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------------------------------
# Tokenizer and dataset identity
# --------------------------------------------------------------------------------------------------


def tokenizer_fingerprint(path: str) -> Optional[str]:
    """A content hash of a tokenizer's vocabulary files, so two paths to one tokenizer compare equal.

    Returns None when the path holds no recognised tokenizer file (nothing to compare).
    """
    import hashlib

    p = Path(path)
    if p.is_file():
        files = [p]
    elif p.is_dir():
        names = ("tokenizer.json", "tokenizer.model", "vocab.json", "merges.txt", "tokenizer_config.json")
        files = [p / n for n in names if (p / n).exists()] or sorted(p.glob("*.gguf"))[:1]
    else:
        return None
    if not files:
        return None
    digest = hashlib.sha256()
    for f in files:
        digest.update(f.name.encode())
        digest.update(f.read_bytes())
    return digest.hexdigest()[:16]


def same_tokenizer(a: str, b: str) -> bool:
    """Two tokenizer references name one tokenizer: equal strings, or files with equal content."""
    if a == b or os.path.abspath(os.path.expanduser(a)) == os.path.abspath(os.path.expanduser(b)):
        return True
    fa, fb = tokenizer_fingerprint(a), tokenizer_fingerprint(b)
    if fa is None or fb is None:
        return True  # a registry name on one side: nothing to compare here (tide-preprocess resolved it)
    return fa == fb


def read_dataset_meta(prefix: str) -> Optional[dict]:
    """The JSON metadata that ``tide-preprocess`` writes beside a dataset, or None if there is none."""
    for candidate in (Path(prefix) / "meta.json", Path(prefix + ".meta.json")):
        if candidate.is_file():
            try:
                return json.loads(candidate.read_text())
            except json.JSONDecodeError as err:
                raise ConfigError(f"data.train: dataset metadata {str(candidate)!r} is not valid JSON: {err}") from None
    return None


# --------------------------------------------------------------------------------------------------
# Presets: the six paper variants (spec §6, §7.1, §8)
# --------------------------------------------------------------------------------------------------

_PIPELINE_A = {
    "teacher": {"arch": "llada2", "max_length": 1024},
    "data": {"micro_batch_size": 8},
    "optim": {"lr": 5e-5, "epochs": 2.0},
    "objective": {"alm_temperature": 5.0, "timestep_weight": "uniform", "axis_mode": "both"},
}
_PIPELINE_B = {
    "teacher": {"arch": "wedlm", "max_length": 768, "ep": 1, "etp": 1},
    "data": {"micro_batch_size": 10},
    "optim": {"lr": 5e-5, "epochs": 3.0},
    "objective": {"kl_temperature": 2.0, "axis_mode": "both"},
}

PRESETS: dict[str, dict] = {
    # Pipeline A: LLaDA2.0-mini teacher, different tokenizers, chunk-level objectives.
    "a_calm": {**_PIPELINE_A, "objective": {**_PIPELINE_A["objective"], "mode": "alm", "compdemo": False}},
    "a_tide_cross": {**_PIPELINE_A, "objective": {**_PIPELINE_A["objective"], "mode": "reverse_alm",
                                                  "compdemo": False}},
    "a_tide_shared": {**_PIPELINE_A, "objective": {**_PIPELINE_A["objective"], "mode": "alm_taid", "compdemo": True,
                                                   "lambda_init": 0.1, "lambda_max": 0.9,
                                                   "lambda_schedule": "cosine"}},
    # Pipeline B: WeDLM-8B teacher, shared tokenizer, aligned token-level objectives.
    "b_kl": {**_PIPELINE_B, "objective": {**_PIPELINE_B["objective"], "mode": "kl_aligned", "compdemo": False}},
    "b_tide_cross": {**_PIPELINE_B, "objective": {**_PIPELINE_B["objective"], "mode": "reverse_kl_aligned",
                                                  "compdemo": False}},
    "b_tide_shared": {**_PIPELINE_B, "objective": {**_PIPELINE_B["objective"], "mode": "taid_aligned",
                                                   "compdemo": True, "timestep_weight": "midrange",
                                                   "lambda_init": 0.1, "lambda_max": 0.9,
                                                   "lambda_schedule": "cosine"}},
}


# --------------------------------------------------------------------------------------------------
# Loading and overrides
# --------------------------------------------------------------------------------------------------


def _deep_merge(base: dict, update: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _coerce(value: Any, annotation: Any, name: str) -> Any:
    """Convert a YAML/CLI value to a dataclass field's type, or raise naming the field."""
    origin = typing.get_origin(annotation)
    if origin is typing.Union:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            return None
        return _coerce(value, args[0], name)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on", "false", "no", "0", "off"):
            return value.lower() in ("true", "yes", "1", "on")
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise ConfigError(f"{name}: expected a boolean, got {value!r}")
    if annotation is int:
        if isinstance(value, bool):
            raise ConfigError(f"{name}: expected an integer, got {value!r}")
        if isinstance(value, float) and value.is_integer():
            return int(value)
        try:
            if isinstance(value, float):
                raise ValueError(value)
            return int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{name}: expected an integer, got {value!r}") from None
    if annotation is float:
        if isinstance(value, bool):
            raise ConfigError(f"{name}: expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{name}: expected a number, got {value!r}") from None
    if annotation is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{name}: expected a string, got {value!r}")
        return "" if value is None else str(value)
    return value


def _build_section(cls: type, values: dict, section: str) -> Any:
    if not isinstance(values, dict):
        raise ConfigError(f"{section}: expected a mapping of fields, got {values!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"{section}.{unknown[0]}: unknown field; valid fields are {', '.join(sorted(known))}")
    kwargs = {k: _coerce(v, hints[k], f"{section}.{k}") for k, v in values.items()}
    return cls(**kwargs)


def config_from_dict(raw: dict) -> TrainConfig:
    """Build and validate a `TrainConfig` from nested plain data (preset first, then the given values)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"config: expected a mapping at the top level, got {type(raw).__name__}")
    preset = raw.get("preset") or ""
    if preset:
        if preset not in PRESETS:
            raise ConfigError(f"preset: unknown preset {preset!r}; valid presets are {', '.join(PRESETS)}")
        raw = _deep_merge(PRESETS[preset], raw)
    top_fields = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(raw) - top_fields)
    if unknown:
        raise ConfigError(f"{unknown[0]}: unknown top-level key; valid keys are {', '.join(sorted(top_fields))}")
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        if key in SECTIONS:
            kwargs[key] = _build_section(SECTIONS[key], value or {}, key)
        else:
            kwargs[key] = _coerce(value, str, key)
    return TrainConfig(**kwargs)


def parse_overrides(overrides: list[str]) -> dict:
    """``["optim.lr=1e-4", "objective.compdemo=true"]`` → nested dict with YAML-parsed values."""
    nested: dict = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected KEY=VALUE, e.g. optim.lr=1e-4")
        key, text = item.split("=", 1)
        parts = key.strip().split(".")
        if len(parts) > 2 or not all(parts):
            raise ConfigError(f"override {item!r}: expected SECTION.FIELD=VALUE or TOP_KEY=VALUE")
        if len(parts) == 2 and parts[0] not in SECTIONS:
            raise ConfigError(f"override {item!r}: unknown section {parts[0]!r}; valid sections are "
                              f"{', '.join(SECTIONS)}")
        try:
            value = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError:
            value = text
        target = nested
        for part in parts[:-1]:
            target = target.setdefault(part, {})
        target[parts[-1]] = value
    return nested


def load_config(path: Optional[str] = None, overrides: Optional[list[str]] = None) -> TrainConfig:
    """Read a YAML config, apply dotted overrides, validate. Errors name the file and the field."""
    raw: dict = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"--config: file {path!r} does not exist")
        try:
            raw = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML: {err}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level")
        raw = _expand_paths(raw)
    raw = _deep_merge(raw, parse_overrides(overrides or []))
    try:
        return config_from_dict(raw)
    except ConfigError as err:
        if path is not None:
            raise ConfigError(f"{path}: {err}") from None
        raise


_PATH_FIELDS = {("teacher", "checkpoint"), ("teacher", "tokenizer"), ("student", "checkpoint"),
                ("student", "tokenizer"), ("data", "train"), ("data", "valid")}


def _expand_paths(raw: dict) -> dict:
    """Expand ``~`` and ``${VAR}`` (e.g. ``${TIDE_CACHE_DIR}``) in the path fields of a config file."""
    out = copy.deepcopy(raw)
    env = {"TIDE_CACHE_DIR": os.path.expanduser("~/.cache/tide-megatron"), **os.environ}
    for section, name in _PATH_FIELDS:
        value = (out.get(section) or {}).get(name)
        if isinstance(value, str) and value:
            out[section][name] = os.path.expanduser(_expand_vars(value, env))
    return out


def _expand_vars(text: str, env: dict) -> str:
    import string

    return string.Template(text).safe_substitute(env)


def dump_config(cfg: TrainConfig) -> str:
    """The resolved config as YAML (saved beside every checkpoint)."""
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)

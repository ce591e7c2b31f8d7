"""Training configuration: one dataclass per concern, YAML files, dotted ``key=value`` overrides.

`load_config(path, overrides)` reads a YAML file whose top-level keys are the sections below
(``teacher``, ``student``, ``data``, ``optim``, ``objective``, ``checkpoint``, ``logging``,
``precision``), optionally starting from one of the six paper presets (``preset: a_tide_cross`` ...),
then applies overrides such as ``optim.lr=1e-4``. Every section validates itself in ``__post_init__``
and names the offending field; `TrainConfig.check_world_size` checks the layouts against the job.
The ``objective`` section is `losses.modes.ObjectiveConfig` (modes of spec §6, hyperparameters of §7.1).
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import dataclasses
import os
import string
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from tide_megatron.data.compatibility import check_dataset, read_dataset_meta, same_tokenizer
from tide_megatron.distributed.grids import ParallelLayout
from tide_megatron.errors import ConfigError, require
from tide_megatron.losses.modes import CHUNK_LEVEL_MODES, ObjectiveConfig

_CHECK_PATHS: contextvars.ContextVar[bool] = contextvars.ContextVar("tide_check_paths", default=True)


@contextlib.contextmanager
def paths_unchecked():
    """Build configs without requiring their files to exist (inspecting full-scale examples)."""
    token = _CHECK_PATHS.set(False)
    try:
        yield
    finally:
        _CHECK_PATHS.reset(token)


def _require_path(path: Optional[str], name: str, kind: str = "file or directory") -> None:
    """A configured path must exist (checked before any work is done)."""
    if path and _CHECK_PATHS.get() and not Path(path).exists():
        raise ConfigError(f"{name}: {kind} {path!r} does not exist")


# --------------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------------

TEACHER_ARCHS = ("llada2", "wedlm")


@dataclass
class TeacherConfig:
    """The teacher checkpoint and its layout on the teacher grid (spec §2; DESIGN §2)."""

    arch: str = "llada2"  # llada2 (pipeline A, MoE, bidirectional) | wedlm (pipeline B, Qwen3 layout, [x0 ; xt])
    checkpoint: str = ""  # HF directory (config.json + safetensors), streamed onto the teacher grid at start-up
    tokenizer: str = ""  # defaults to the checkpoint directory
    tp: int = 1
    pp: int = 1
    ep: int = 1
    etp: int = 1
    dtype: str = "bf16"  # bf16 | fp32 (inference only, no gradients)
    mask_id: Optional[int] = None  # None: read from the checkpoint / tokenizer
    # MoE kernels (LLaDA2; models/moe_kernels.py): None = on with Transformer Engine, off on the local backend.
    moe_grouped_gemm: Optional[bool] = None
    moe_permute_fusion: Optional[bool] = None
    moe_dispatcher: str = "alltoall"  # alltoall | allgather

    def __post_init__(self) -> None:
        require(self.arch in TEACHER_ARCHS, "teacher.arch", "|".join(TEACHER_ARCHS), self.arch)
        require(self.dtype in ("bf16", "fp32"), "teacher.dtype", "bf16|fp32", self.dtype)
        for name in ("tp", "pp", "ep", "etp"):
            require(isinstance(getattr(self, name), int) and getattr(self, name) >= 1, f"teacher.{name}",
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
    recompute: bool = False  # full activation recomputation for large micro-batches
    logits_chunk_seqs: int = 1  # sequences per output-layer + loss group (0 = the whole micro-batch at once, §9.21)
    skip_unmasked_blocks: bool = True  # leave out xt blocks without a masked token and the x0 blocks after them

    def __post_init__(self) -> None:
        require(self.tp >= 1, "student.tp", "an integer >= 1", self.tp)
        require(self.block_size >= 1, "student.block_size", "an integer >= 1", self.block_size)
        require(self.logits_chunk_seqs >= 0, "student.logits_chunk_seqs", "an integer >= 0", self.logits_chunk_seqs)
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
        require(self.micro_batch_size >= 1, "data.micro_batch_size", "an integer >= 1", self.micro_batch_size)
        require(self.num_workers >= 0, "data.num_workers", "an integer >= 0", self.num_workers)
        require(self.prefetch_factor >= 1, "data.prefetch_factor", "an integer >= 1", self.prefetch_factor)
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
        require(self.lr > 0, "optim.lr", "> 0", self.lr)
        require(0 <= self.min_lr <= self.lr, "optim.min_lr", f"a value in [0, optim.lr={self.lr}]", self.min_lr)
        require(0.0 <= self.warmup_ratio < 1.0, "optim.warmup_ratio", "a value in [0, 1)", self.warmup_ratio)
        require(self.lr_schedule in ("cosine", "linear", "constant"), "optim.lr_schedule",
                 "cosine|linear|constant", self.lr_schedule)
        require(self.epochs > 0, "optim.epochs", "> 0", self.epochs)
        require(self.train_steps >= 0, "optim.train_steps", "an integer >= 0", self.train_steps)
        require(self.grad_accum >= 1, "optim.grad_accum", "an integer >= 1", self.grad_accum)
        require(self.clip_grad >= 0, "optim.clip_grad", ">= 0 (0 disables clipping)", self.clip_grad)
        require(0 <= self.adam_beta1 < 1 and 0 <= self.adam_beta2 < 1, "optim.adam_beta1/2", "values in [0, 1)",
                 (self.adam_beta1, self.adam_beta2))


@dataclass
class CheckpointConfig:
    """Atomic megatron-core dist checkpoints (DESIGN §1)."""

    dir: str = ""  # default: <output_dir>/checkpoints
    save_interval: int = 10000  # optimizer steps (HF save_steps, §7.1)
    keep_last: int = 2
    resume: str = "auto"  # auto (latest in dir, if any) | force (auto, even from another run) | none | a directory
    save_on_signal: bool = True  # SIGTERM / SIGUSR1: checkpoint, then exit 0
    save_at_end: bool = True

    def __post_init__(self) -> None:
        require(self.save_interval >= 1, "checkpoint.save_interval", "an integer >= 1", self.save_interval)
        require(self.keep_last >= 1, "checkpoint.keep_last", "an integer >= 1", self.keep_last)
        if self.resume not in ("auto", "force", "none"):
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
        require(self.log_interval >= 1, "logging.log_interval", "an integer >= 1", self.log_interval)
        require(self.eval_interval >= 0, "logging.eval_interval", "an integer >= 0", self.eval_interval)
        require(self.eval_batches >= 1, "logging.eval_batches", "an integer >= 1", self.eval_batches)


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
        require(self.dtype in ("bf16", "fp32"), "precision.dtype", "bf16|fp32", self.dtype)
        require(self.fp8_format in ("hybrid", "e4m3"), "precision.fp8_format", "hybrid|e4m3", self.fp8_format)
        require(self.fp8_recipe in ("delayed", "tensorwise"), "precision.fp8_recipe", "delayed|tensorwise",
                 self.fp8_recipe)
        require(self.fp8_amax_compute_algo in ("max", "most_recent"), "precision.fp8_amax_compute_algo",
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
        require(bool(self.output_dir), "output_dir", "a directory path", self.output_dir)
        if not self.checkpoint.dir:
            self.checkpoint.dir = os.path.join(self.output_dir, "checkpoints")
        if not self.logging.dir:
            self.logging.dir = os.path.join(self.output_dir, "tensorboard")
        if self.objective.needs_teacher and _CHECK_PATHS.get():
            require(bool(self.teacher.checkpoint), "teacher.checkpoint",
                     f"a checkpoint path (objective.mode={self.objective.mode!r} needs a teacher)", "")
        if _CHECK_PATHS.get():
            require(bool(self.student.checkpoint), "student.checkpoint", "a checkpoint path", "")
        self._check_mode_against_tokenizers()
        self._check_tokenizers_against_dataset()

    # -- cross-section checks ------------------------------------------------------------------------

    def _check_mode_against_tokenizers(self) -> None:
        """Token-level modes compare logits position by position: they need one shared tokenizer (§6)."""
        if not self.objective.needs_teacher or self.objective.chunk_level:
            return
        if self.teacher.arch == "llada2":
            raise ConfigError(
                f"objective.mode: {self.objective.mode!r} is token-level and needs a teacher that shares the "
                f"student's tokenizer (pipeline B); the llada2 teacher has a different tokenizer: use a chunk "
                f"mode ({', '.join(CHUNK_LEVEL_MODES)})")
        s_tok, t_tok = self.student.tokenizer_path, self.teacher.tokenizer_path
        if _CHECK_PATHS.get() and s_tok and t_tok and same_tokenizer(s_tok, t_tok) is False:
            raise ConfigError(
                f"objective.mode: {self.objective.mode!r} is token-level but student.tokenizer {s_tok!r} and "
                f"teacher.tokenizer {t_tok!r} differ; use a chunk mode ({', '.join(CHUNK_LEVEL_MODES)})")

    def _check_tokenizers_against_dataset(self) -> None:
        """The dataset (tide-preprocess meta.json) must have been written for these tokenizers, this mode and L."""
        if not (_CHECK_PATHS.get() and self.data.train):
            return
        meta = read_dataset_meta(self.data.train)
        if meta is not None:
            check_dataset(meta, self, f"data.train {self.data.train!r}")

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
# Presets: the six paper variants (spec §6, §7.1, §8)
# --------------------------------------------------------------------------------------------------

_PIPELINE_A = {
    "teacher": {"arch": "llada2"},
    "data": {"micro_batch_size": 8},
    "optim": {"lr": 5e-5, "epochs": 2.0},
    "objective": {"alm_temperature": 5.0, "timestep_weight": "uniform", "axis_mode": "both"},
}
_PIPELINE_B = {
    "teacher": {"arch": "wedlm", "ep": 1, "etp": 1},
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


#: Fields of earlier versions: loading a config that sets one says what to write instead.
RETIRED_FIELDS = {
    "objective.distill_weight": "replaced by objective.kl_weight, objective.taid_weight and objective.alm_weight "
                                "(the weight of each kind of term; all 1.0 in the paper, spec §9.20)",
    "teacher.max_length": "removed (nothing read it): the teacher length is fixed when the dataset is written, "
                          "with tide-preprocess --teacher-max-len",
    "student.mask_id": "removed (nothing read it): the student mask id is the student tokenizer's, recorded in "
                       "the dataset's meta.json by tide-preprocess",
}


def _build_section(cls: type, values: dict, section: str) -> Any:
    if not isinstance(values, dict):
        raise ConfigError(f"{section}: expected a mapping of fields, got {values!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    retired = sorted(f"{section}.{k}" for k in values if f"{section}.{k}" in RETIRED_FIELDS)
    if retired:
        raise ConfigError(f"{retired[0]}: {RETIRED_FIELDS[retired[0]]}")
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
    return string.Template(text).safe_substitute(env)


def dump_config(cfg: TrainConfig) -> str:
    """The resolved config as YAML (saved beside every checkpoint)."""
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)

"""Training configuration: one dataclass per concern, loaded with OmegaConf from YAML and dotted overrides.

`load_config(path, overrides)` merges, in order: the dataclass defaults (`OmegaConf.structured(TrainConfig)`),
the paper preset the file names (``preset: a_tide_cross``; the six live in ``presets.yaml``), the file, then
``SECTION.FIELD=VALUE`` overrides (`OmegaConf.from_dotlist`). Values may interpolate (``${cache_dir}/data``,
``${oc.env:NAME,default}``). OmegaConf checks names and types; `OmegaConf.to_object` then builds the
dataclasses, whose ``__post_init__`` validates each section; every error is a `ConfigError` naming the field.
`TrainConfig.check_world_size` checks the layouts against the job. The ``objective`` section is
`losses.modes.ObjectiveConfig` (modes of spec §6, hyperparameters of §7.1).
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import json
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from tide_megatron.data.compatibility import check_dataset, read_dataset_meta, same_tokenizer
from tide_megatron.distributed.grids import ParallelLayout
from tide_megatron.errors import ConfigError, require
from tide_megatron.fixtures.artifacts import cache_dir as artifact_cache_dir
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
#: Where the teacher runs (DESIGN §2, docs/PLACEMENT.md): on every rank beside the student, on a pool of ranks of
#: its own, or nowhere (payloads read from a cache written by tide-teacher-cache).
TEACHER_PLACEMENTS = ("colocated", "separate", "offline")


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
    placement: str = "colocated"  # colocated | separate | offline (docs/PLACEMENT.md)
    ranks: int = 0  # separate: ranks of the teacher pool (the last ones of the job); the student gets the others
    cache: str = ""  # offline: the payload cache of tide-teacher-cache (default: <data.train>.teacher-cache)

    def __post_init__(self) -> None:
        require(self.arch in TEACHER_ARCHS, "teacher.arch", "|".join(TEACHER_ARCHS), self.arch)
        require(self.placement in TEACHER_PLACEMENTS, "teacher.placement", "|".join(TEACHER_PLACEMENTS),
                self.placement)
        require(isinstance(self.ranks, int) and self.ranks >= 0, "teacher.ranks", "an integer >= 0", self.ranks)
        if self.placement == "separate":
            require(self.ranks >= 1, "teacher.ranks", "the size of the teacher pool (>= 1) with "
                    "teacher.placement=separate", self.ranks)
        elif self.ranks:
            raise ConfigError(f"teacher.ranks: only teacher.placement=separate has a teacher pool; got "
                              f"teacher.ranks={self.ranks} with teacher.placement={self.placement}")
        require(self.dtype in ("bf16", "fp32"), "teacher.dtype", "bf16|fp32", self.dtype)
        for name in ("tp", "pp", "ep", "etp"):
            require(isinstance(getattr(self, name), int) and getattr(self, name) >= 1, f"teacher.{name}",
                     "an integer >= 1", getattr(self, name))
        if self.arch == "wedlm" and (self.ep != 1 or self.etp != 1):
            raise ConfigError(f"teacher.ep: the dense WeDLM teacher has no experts; expected ep=1, etp=1, "
                              f"got ep={self.ep}, etp={self.etp}")
        _require_path(self.checkpoint, "teacher.checkpoint")
        _require_path(self.tokenizer, "teacher.tokenizer")
        if self.placement == "separate":
            self.pool_data_parallel_size()

    @property
    def layout(self) -> ParallelLayout:
        return ParallelLayout(tp=self.tp, pp=self.pp, ep=self.ep, etp=self.etp)

    def pool_data_parallel_size(self) -> int:
        """Teacher replicas in the separate pool: a pool too small for (or not a multiple of) tp x pp and
        etp x ep x pp is an error naming teacher.ranks."""
        dense, expert = self.tp * self.pp, self.etp * self.ep * self.pp
        if self.ranks % dense or self.ranks % expert:
            raise ConfigError(
                f"teacher.ranks: a teacher pool of {self.ranks} ranks cannot hold teacher.tp x teacher.pp = "
                f"{self.tp} x {self.pp} = {dense} and teacher.etp x teacher.ep x teacher.pp = {self.etp} x {self.ep} "
                f"x {self.pp} = {expert} (expected a multiple of both)")
        return self.ranks // dense

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
    preset: str = ""  # one of PRESETS (presets.yaml), merged under the file's own values
    # What ``${cache_dir}`` in a path means: $TIDE_CACHE_DIR, else ~/.cache/tide-megatron (fixtures/artifacts.py).
    cache_dir: str = field(default_factory=lambda: str(artifact_cache_dir()))
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
        self.check_offline_payload()

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

    def check_offline_payload(self, force: bool = False) -> None:
        """An offline cache holds one fp32 per teacher token: the chunk modes' payload. The token modes distil
        full-vocabulary rows, far too large to store for every epoch (docs/PLACEMENT.md). Checked for
        teacher.placement=offline, or always with ``force`` (tide-teacher-cache)."""
        if not (force or self.teacher.placement == "offline"):
            return
        if not self.objective.needs_teacher:
            if force:
                raise ConfigError(f"objective.mode: {self.objective.mode!r} has no teacher term, so there are no "
                                  f"teacher payloads to cache")
            return
        if self.objective.chunk_level:
            return
        vocab = self.objective.shared_vocab or _checkpoint_vocab(self.teacher.checkpoint)
        row = f"{vocab:,} fp32 = {4 * vocab / 2**10:,.0f} KiB per distilled position" if vocab else \
            "one fp32 per vocabulary id per distilled position"
        raise ConfigError(
            f"teacher.placement: offline payloads are one fp32 per teacher token (the chunk modes: "
            f"{', '.join(CHUNK_LEVEL_MODES)}); objective.mode={self.objective.mode!r} distils full-vocabulary logit "
            f"rows ({row}, about half the student's tokens per sample and epoch), which is far too large to "
            f"precompute; use teacher.placement=colocated or separate for this mode")

    def _check_tokenizers_against_dataset(self) -> None:
        """The dataset (tide-preprocess meta.json) must have been written for these tokenizers, this mode and L."""
        if not (_CHECK_PATHS.get() and self.data.train):
            return
        meta = read_dataset_meta(self.data.train)
        if meta is not None:
            check_dataset(meta, self, f"data.train {self.data.train!r}")

    @property
    def teacher_placement(self) -> str:
        """Where the teacher runs; 'colocated' for a mode without a teacher (nothing is placed)."""
        return self.teacher.placement if self.objective.needs_teacher else "colocated"

    def student_world_size(self, world_size: int) -> int:
        """The ranks the student spans: the world, less the teacher pool with teacher.placement=separate."""
        if self.teacher_placement != "separate":
            return world_size
        if self.teacher.ranks >= world_size:
            raise ConfigError(f"teacher.ranks: the teacher pool takes {self.teacher.ranks} of the {world_size} ranks "
                              f"of this job and leaves none for the student (expected teacher.ranks < {world_size})")
        return world_size - self.teacher.ranks

    def check_world_size(self, world_size: int) -> tuple[int, int]:
        """Teacher and student data-parallel sizes; a clear error when a layout does not divide its ranks
        (the world, or with teacher.placement=separate the teacher pool and the rest)."""
        placement = self.teacher_placement
        students = self.student_world_size(world_size)
        try:
            if placement == "separate":
                teacher_dp = self.teacher.pool_data_parallel_size()
            elif placement == "colocated" and self.objective.needs_teacher:
                teacher_dp = self.teacher.layout.data_parallel_size(world_size, "teacher")
            else:
                teacher_dp = world_size
            student_dp = self.student.layout.data_parallel_size(students, "student")
        except ValueError as err:
            where = f" (the {students} ranks left beside teacher.ranks={self.teacher.ranks})" \
                if placement == "separate" else ""
            raise ConfigError(f"{err}{where}") from None
        if placement == "separate" and student_dp % teacher_dp:
            raise ConfigError(f"teacher.ranks: the teacher pool holds {teacher_dp} teacher replicas (teacher.ranks / "
                              f"(tp x pp)) but the student has {student_dp} data-parallel ranks; expected the "
                              f"replicas to divide them, so that every replica serves as many student ranks")
        return teacher_dp, student_dp

    @property
    def teacher_cache_path(self) -> str:
        """teacher.cache, or the directory next to the training dataset (``<data.train>.teacher-cache``)."""
        return self.teacher.cache or (self.data.train.rstrip("/") + ".teacher-cache" if self.data.train else "")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _checkpoint_vocab(checkpoint: str) -> Optional[int]:
    """vocab_size from a checkpoint's config.json, None when it cannot be read."""
    try:
        return int(json.loads((Path(checkpoint) / "config.json").read_text())["vocab_size"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


# --------------------------------------------------------------------------------------------------
# Presets: the six paper variants, whose one home is presets.yaml (spec §6, §7.1, §8)
# --------------------------------------------------------------------------------------------------

PRESETS_FILE = Path(__file__).with_name("presets.yaml")


def _read_presets(path: Path = PRESETS_FILE) -> dict[str, dict]:
    """Each preset of ``presets.yaml`` merged onto the shared values of its pipeline, as nested plain data."""
    raw = OmegaConf.load(path)
    presets = {}
    for name, spec in raw.presets.items():
        own = OmegaConf.to_container(spec)
        presets[name] = OmegaConf.to_container(OmegaConf.merge(raw.pipelines[own.pop("pipeline")], own))
    return presets


PRESETS: dict[str, dict] = _read_presets()


# --------------------------------------------------------------------------------------------------
# Loading: OmegaConf merges defaults, preset, file and overrides; the dataclasses validate
# --------------------------------------------------------------------------------------------------

#: Fields of earlier versions: loading a config that sets one says what to write instead.
RETIRED_FIELDS = {
    "objective.distill_weight": "replaced by objective.kl_weight, objective.taid_weight and objective.alm_weight "
                                "(the weight of each kind of term; all 1.0 in the paper, spec §9.20)",
    "teacher.max_length": "removed (nothing read it): the teacher length is fixed when the dataset is written, "
                          "with tide-preprocess --teacher-max-len",
    "student.mask_id": "removed (nothing read it): the student mask id is the student tokenizer's, recorded in "
                       "the dataset's meta.json by tide-preprocess",
}

#: Fields holding a path: ``~`` is expanded once interpolations are resolved.
PATH_FIELDS = ("cache_dir", "output_dir", "teacher.checkpoint", "teacher.tokenizer", "teacher.cache",
               "student.checkpoint", "student.tokenizer", "data.train", "data.valid", "checkpoint.dir", "checkpoint.resume", "logging.dir")

_NULL_WORDS = ("", "none", "null")
_KINDS = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}


def _field_hints() -> dict[str, Any]:
    """``section.field`` (or ``top_key``) → the type annotation of every field of `TrainConfig`."""
    hints = {k: v for k, v in typing.get_type_hints(TrainConfig).items() if k not in SECTIONS}
    for section, cls in SECTIONS.items():
        hints.update({f"{section}.{k}": v for k, v in typing.get_type_hints(cls).items()})
    return hints


_HINTS = _field_hints()


def _is_optional(hint: Any) -> bool:
    return type(None) in typing.get_args(hint)


def _expected(dotted: str) -> str:
    """What a field holds, in words, for error messages (``"an integer"``, ``"a number or null"``)."""
    if dotted in SECTIONS:
        return "a mapping of fields"
    hint = _HINTS.get(dotted)
    base = next((a for a in typing.get_args(hint) if a is not type(None)), hint) if _is_optional(hint) else hint
    kind = _KINDS.get(base, "a valid value")
    return f"{kind} or null" if _is_optional(hint) else kind


def _named(where: Optional[str], message: str) -> ConfigError:
    return ConfigError(f"{where}: {message}" if where else message)


def _null_as_unset(value: Any, dotted: str) -> Any:
    """YAML's empty value / ``null`` (and the word ``none``) mean "unset": ``""`` for a string field, None
    for an optional one, as each dataclass spells it."""
    hint = _HINTS.get(dotted)
    if value is None and hint is str:
        return ""
    if _is_optional(hint) and isinstance(value, str) and value.strip().lower() in _NULL_WORDS:
        return None
    return value


def _layer(values: Any, where: Optional[str]) -> dict:
    """One layer of settings (a file, an override, a dict) checked for shape and retired fields."""
    if not isinstance(values, dict):
        raise _named(where, f"config: expected a mapping at the top level, got {type(values).__name__}")
    out = {}
    for key, value in values.items():
        if key in SECTIONS and value is None:
            continue  # an empty section: all defaults
        if key in SECTIONS:
            if not isinstance(value, dict):
                raise _named(where, f"{key}: expected a mapping of fields, got {value!r}")
            retired = sorted(f"{key}.{name}" for name in value if f"{key}.{name}" in RETIRED_FIELDS)
            if retired:
                raise _named(where, f"{retired[0]}: {RETIRED_FIELDS[retired[0]]}")
            value = {name: _null_as_unset(v, f"{key}.{name}") for name, v in value.items()}
        else:
            value = _null_as_unset(value, key)
        out[key] = value
    return out


def _describe(err: OmegaConfBaseException, layer: dict) -> str:
    """OmegaConf's error about one layer, as ``section.field: what was expected``."""
    key = err.full_key or ""
    if isinstance(err, ConfigKeyError):
        owner = err.object_type
        if owner is TrainConfig and isinstance(layer.get(key), dict):
            return f"{key}: unknown section {key!r}; valid sections are {', '.join(SECTIONS)}"
        if owner is TrainConfig:
            keys = sorted(f.name for f in dataclasses.fields(TrainConfig))
            return f"{key}: unknown top-level key; valid keys are {', '.join(keys)}"
        if dataclasses.is_dataclass(owner):
            names = sorted(f.name for f in dataclasses.fields(owner))
            return f"{key}: unknown field; valid fields are {', '.join(names)}"
    if isinstance(err, ValidationError) and key:
        return f"{key}: expected {_expected(key)}, got {err.value!r}"
    return f"{key or 'config'}: {_first_line(err)}"


def _first_line(err: Exception) -> str:
    """OmegaConf appends the key and types on further lines; our messages name the field themselves."""
    return str(err).strip().splitlines()[0]


def _one_line(err: Exception) -> str:
    """A YAML parser error (where, what) on one line."""
    return " ".join(str(err).split())


def _build(layers: list[tuple[Optional[str], dict]], where: Optional[str]) -> TrainConfig:
    """Merge the layers onto the defaults (the named preset first), resolve, and build the dataclasses.

    ``layers`` are (label, nested plain data); a layer's type or key error names its label, a validation
    error names ``where`` (the config file, if any).
    """
    layers = [(label, _layer(values, label)) for label, values in layers]
    preset = ""
    for _, values in layers:
        preset = values.get("preset", preset) or ""
    if preset:
        if preset not in PRESETS:
            raise _named(where, f"preset: unknown preset {preset!r}; valid presets are {', '.join(PRESETS)}")
        layers.insert(0, (f"preset {preset!r}", PRESETS[preset]))
    cfg = OmegaConf.structured(TrainConfig)
    for label, values in layers:
        try:
            cfg = OmegaConf.merge(cfg, values)
        except OmegaConfBaseException as err:
            raise _named(label, _describe(err, values)) from None
    try:
        OmegaConf.resolve(cfg)
    except OmegaConfBaseException as err:
        raise _named(where, f"{err.full_key}: cannot resolve its interpolation ({_first_line(err)}); for a path "
                            f"write ${{cache_dir}}/... or ${{oc.env:NAME,default}}") from None
    for dotted in PATH_FIELDS:
        value = OmegaConf.select(cfg, dotted)
        if value:
            OmegaConf.update(cfg, dotted, os.path.expanduser(value))
    try:
        return OmegaConf.to_object(cfg)  # runs every section's __post_init__, then TrainConfig's
    except ConfigError as err:
        raise _named(where, str(err)) from None


def config_from_dict(raw: dict) -> TrainConfig:
    """Build and validate a `TrainConfig` from nested plain data (the named preset first, then the values)."""
    return _build([(None, raw)], None)


def _parse_override(item: str) -> dict:
    """``"optim.lr=1e-4"`` → ``{"optim": {"lr": 1e-4}}`` (the value read as YAML, by OmegaConf)."""
    key, sep, _ = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {item!r}: expected KEY=VALUE, e.g. optim.lr=1e-4")
    try:
        return OmegaConf.to_container(OmegaConf.from_dotlist([item]), resolve=False)
    except yaml.YAMLError as err:
        raise ConfigError(f"override {item!r}: the value is not valid YAML ({_one_line(err)})") from None
    except OmegaConfBaseException as err:
        raise ConfigError(f"override {item!r}: {_first_line(err)}") from None


def parse_overrides(overrides: list[str]) -> dict:
    """``["optim.lr=1e-4", "objective.compdemo=true"]`` → nested plain data (names and types checked later)."""
    return OmegaConf.to_container(OmegaConf.merge({}, *(_parse_override(item) for item in overrides)))


def _read_yaml(path: str) -> dict:
    if not Path(path).is_file():
        raise ConfigError(f"--config: file {path!r} does not exist")
    try:
        raw = OmegaConf.load(path)
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {_one_line(err)}") from None
    if not isinstance(raw, DictConfig):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return OmegaConf.to_container(raw, resolve=False)


def load_config(path: Optional[str] = None, overrides: Optional[list[str]] = None) -> TrainConfig:
    """Read a YAML config, apply dotted overrides, validate. Errors name the file or override and the field."""
    layers: list[tuple[Optional[str], dict]] = []
    if path is not None:
        layers.append((path, _read_yaml(path)))
    layers += [(f"override {item!r}", _parse_override(item)) for item in overrides or []]
    return _build(layers, path)


def dump_config(cfg: TrainConfig) -> str:
    """The resolved config as YAML (saved beside every checkpoint; `load_config` reads it back)."""
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)

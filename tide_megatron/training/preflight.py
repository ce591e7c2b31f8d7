"""Start-up checks of tide-train, each one clear error before any model is built.

- The machine (training/machine_check.py): a job given GPUs whose torch sees no CUDA; a Transformer Engine
  install this torch cannot use.
- FP8 this GPU or TE cannot run (training/fp8.py).
- Layouts the models cannot be split over (heads, KV groups, vocabulary, FFN sizes, experts, layers against
  tp / etp / ep / pp), and MoE kernels the backend cannot run (models/moe_kernels.py). The checks read only
  the checkpoints' config.json and build megatron-core `TransformerConfig`s, whose own validation runs too.
- Layouts whose collectives the process-group backend lacks (expert tensor parallelism with ep>1 on gloo).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Optional

from tide_megatron.config import TeacherConfig, TrainConfig
from tide_megatron.distributed.init import default_backend
from tide_megatron.models.backend import backend_name
from tide_megatron.models.llada2.config import LLaDA2Config
from tide_megatron.models.moe_kernels import PERMUTE_FUSION_MIN_TE, MoEKernelError, MoEKernels, resolve_moe_kernels
from tide_megatron.models.qwen3.config import qwen3_args_from_hf, wedlm_args_from_hf
from tide_megatron.models.transformer_engine import te_version_at_least
from tide_megatron.training.fp8 import check_fp8_available
from tide_megatron.training.machine_check import StartupError, check_machine


def teacher_moe_kernels(cfg: TeacherConfig, backend: str) -> MoEKernels:
    """The teacher's MoE kernels for ``backend`` from its config fields (one home: models/moe_kernels.py)."""
    try:
        return resolve_moe_kernels(backend, cfg.moe_grouped_gemm, cfg.moe_permute_fusion, cfg.moe_dispatcher,
                                   te_version_ok=te_version_at_least(PERMUTE_FUSION_MIN_TE))
    except MoEKernelError as err:
        raise StartupError(f"{err} (backend: {backend})") from None


def _is_hf_dir(path: str) -> bool:
    return bool(path) and (Path(path) / "config.json").is_file()


def check_layouts(cfg: TrainConfig, backend: str) -> None:
    """Build (not instantiate) each model's megatron config for its layout: every split error, named."""
    checks = []
    if _is_hf_dir(cfg.student.checkpoint):
        checks.append(("student.tp", lambda: qwen3_args_from_hf(cfg.student.checkpoint, tp=cfg.student.tp)))
    teacher = cfg.teacher
    if cfg.objective.needs_teacher and _is_hf_dir(teacher.checkpoint):
        if teacher.arch == "llada2":
            kernels = teacher_moe_kernels(teacher, backend)
            checks.append(("teacher.tp/pp/ep/etp", lambda: LLaDA2Config.from_pretrained(teacher.checkpoint)
                           .to_transformer_config(teacher.layout, moe_kernels=kernels)))
        else:
            checks.append(("teacher.tp/pp", lambda: wedlm_args_from_hf(teacher.checkpoint, teacher.tp, teacher.pp)))
    for fields, build in checks:
        try:
            build()
        except (ValueError, AssertionError) as err:
            raise StartupError(f"{fields}: {err}") from None


def check_collectives(cfg: TrainConfig, dist_backend: str) -> None:
    """Layouts whose collectives the process-group backend lacks: with ep>1, expert tensor parallelism
    all-gathers a different token count from each rank, and gloo's all-gather needs equal sizes."""
    teacher = cfg.teacher
    if dist_backend == "gloo" and cfg.objective.needs_teacher and teacher.etp > 1 and teacher.ep > 1:
        raise StartupError(f"teacher.etp: etp={teacher.etp} with ep={teacher.ep} all-gathers uneven token counts "
                           f"across expert ranks, which gloo (the CPU backend) does not support; use teacher.etp=1 "
                           f"here, or run on GPUs with NCCL")


def preflight(cfg: TrainConfig, env: Mapping[str, str] = os.environ, backend: Optional[str] = None) -> None:
    """Everything tide-train checks at start-up after the config is loaded (see the module docstring)."""
    check_machine(env)
    check_fp8_available(cfg.precision)
    check_layouts(cfg, backend_name(backend))
    check_collectives(cfg, default_backend())

"""Build the student and the teacher of a run from its config, each on its own grid (DESIGN §2, §3).

Thin wrappers over ``models/qwen3`` (student; WeDLM teacher) and ``models/llada2`` (MoE teacher): read
the checkpoint's config, build the megatron-core model with the grid's process groups, load weights
(an HF directory streamed tensor by tensor, or a ``tide-convert`` dist checkpoint), and put the teacher
behind the `TeacherEngine`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Optional

import torch
from megatron.core.tensor_parallel import layers as mcore_layers

from tide_megatron.config import PrecisionConfig, StudentConfig, TeacherConfig
from tide_megatron.distributed.grids import ModelGrid
from tide_megatron.dtypes import torch_dtype
from tide_megatron.models.backend import backend_name
from tide_megatron.models.convert.mcore_dir import args_from_mcore, is_mcore_dir, load_mcore_checkpoint
from tide_megatron.models.llada2 import load_llada2_teacher
from tide_megatron.models.qwen3 import build_qwen3_model
from tide_megatron.models.qwen3.convert import QWEN3
from tide_megatron.models.wedlm import load_wedlm_teacher
from tide_megatron.teacher import TeacherEngine
from tide_megatron.teacher.passes import checkpoint_mask_id
from tide_megatron.training.fp8 import fp8_settings, use_amax_reduction_group
from tide_megatron.training.preflight import teacher_moe_kernels


def read_json(path: str) -> dict:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


@dataclass
class StudentBundle:
    model: torch.nn.Module  # ExplicitMaskGPTModel (before DDP wrapping)
    vocab_size: int
    hf_config: dict


def wgrad_fusion_available() -> bool:
    """megatron's linear layers can accumulate weight gradients straight into DDP's ``main_grad`` (apex's kernel
    on GPU, `distributed.cpu_compat`'s on CPU); TE's layers then do the same (``fuse_wgrad_accumulation``)."""
    return bool(getattr(mcore_layers, "_grad_accum_fusion_available", False))


def build_student(cfg: StudentConfig, precision: PrecisionConfig, grid: ModelGrid,
                  backend: Optional[str] = None) -> StudentBundle:
    """The Qwen3 BD3LM student on the student grid, weights loaded from ``cfg.checkpoint``. Its weight gradients
    accumulate into DDP's ``main_grad`` where megatron's fusion is available, so it trains under DDP only."""
    dtype = torch_dtype(precision.dtype, "precision.dtype")
    overrides = dict(fp8_settings(precision), gradient_accumulation_fusion=wgrad_fusion_available())
    if cfg.recompute:
        overrides.update(recompute_granularity="full", recompute_method="uniform", recompute_num_layers=1)
    if is_mcore_dir(cfg.checkpoint):
        args = args_from_mcore(QWEN3, cfg.checkpoint, tp=cfg.tp, dtype="bfloat16" if dtype == torch.bfloat16
                               else "float32", **overrides)
        model = build_qwen3_model(args, grid.pgs, backend=backend)
        load_mcore_checkpoint(model, cfg.checkpoint)
    else:
        model, args, _ = QWEN3.build_from_hf(cfg.checkpoint, grid.pgs, dtype, backend=backend, **overrides)
    if precision.fp8:  # amaxes reduced over the student's own tp x dp group, not the whole world
        use_amax_reduction_group(model.config, grid.pgs.tp_dp_cp, grid.pgs.tp_cp)
    return StudentBundle(model=model, vocab_size=args.vocab_size, hf_config=args.hf_config)


@dataclass
class TeacherBundle:
    engine: TeacherEngine
    vocab_size: int
    mask_id: Optional[int]  # from config.json / teacher.mask_id; the dataset's tokenizer must agree
    pad_id: int
    eos_id: int


def _teacher_special_ids(cfg: TeacherConfig, hf: dict) -> tuple[Optional[int], int, int]:
    """(mask, pad, eos) teacher ids: config override, else the checkpoint's config.json (§2.1, §2.2)."""
    mask = checkpoint_mask_id(cfg.mask_id, hf, cfg.arch)
    pad = hf.get("pad_token_id")
    eos = hf.get("eos_token_id")
    eos = eos[0] if isinstance(eos, list) else eos
    pad = eos if pad is None else pad
    if pad is None:
        raise ValueError(f"teacher.checkpoint: {cfg.checkpoint}/config.json has neither pad_token_id nor eos_token_id")
    return mask, int(pad), int(eos if eos is not None else pad)


def build_teacher(cfg: TeacherConfig, grid: ModelGrid, backend: Optional[str] = None) -> TeacherBundle:
    """The frozen teacher on the teacher grid behind the payload engine."""
    dtype = torch_dtype(cfg.dtype, "teacher.dtype")
    hf = read_json(os.path.join(cfg.checkpoint, "config.json"))
    mask, pad, eos = _teacher_special_ids(cfg, hf)
    if cfg.arch == "llada2":
        model, lcfg = load_llada2_teacher(cfg.checkpoint, grid.pgs, params_dtype=dtype, backend=backend,
                                          moe_kernels=teacher_moe_kernels(cfg, backend_name(backend)))
        vocab = lcfg.vocab_size
    else:
        model, args = load_wedlm_teacher(cfg.checkpoint, grid.pgs, params_dtype=dtype)
        vocab = args.vocab_size
    engine = TeacherEngine(model, grid.pgs, pad_token_id=pad)
    return TeacherBundle(engine=engine, vocab_size=vocab, mask_id=mask, pad_id=pad, eos_id=eos)

"""A trained student → a Hugging Face Qwen3 checkpoint directory that transformers loads (`Qwen3ForCausalLM`).

Input: a checkpoint written by the trainer (``<checkpoint.dir>/step_XXXXXXX``, or the ``checkpoint.dir``
root, whose ``latest`` names the newest step). Its ``config.yaml`` names the student the run started
from (an HF directory or a ``tide-convert`` megatron directory): that gives the architecture, config.json
and tokenizer files. The weights come from the checkpoint's ``model`` entries (the optimizer state is
not read) and are written with the converter's own pieces (the registered ``qwen3`` `Architecture`:
its model builder and weight mapping; `convert.weights.hf_tensors`, `convert.hf_files.write_hf_safetensors`),
as `models.convert.mcore_dir.mcore_to_hf` does, so there is one megatron → HF key map.

    tide-convert export --checkpoint runs/x/checkpoints [--hf-dir OUT] [--dtype bfloat16]

The output appears only when complete (written to a temporary sibling, then renamed).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Optional

import torch
import torch.distributed as dist
import yaml

from tide_megatron.distributed import ParallelLayout, build_model_grid, checkpoint_io, init_distributed
from tide_megatron.models.convert.hf_files import copy_hf_assets, write_hf_safetensors
from tide_megatron.models.convert.mcore_dir import DTYPES, is_mcore_dir
from tide_megatron.models.convert.output_dir import atomic_output_dir
from tide_megatron.models.convert.weights import hf_tensors
from tide_megatron.models.llada2.model import ensure_megatron_runtime
from tide_megatron.models.registry import get_architecture
from tide_megatron.training.checkpoint import CheckpointError, resolve_resume, validate_checkpoint_dir

DDP_PREFIX = "module."
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja")


def resolve_step_dir(checkpoint: str) -> str:
    """A step directory, or the newest complete one under a checkpoint root; errors name the path."""
    path = Path(checkpoint)
    if not path.is_dir():
        raise FileNotFoundError(f"--checkpoint {checkpoint}: no such directory")
    if (path / "tide_checkpoint.json").is_file():
        validate_checkpoint_dir(str(path))
        return str(path)
    step = resolve_resume("auto", str(path))
    if step is None:
        raise CheckpointError(f"--checkpoint {checkpoint}: neither a trainer checkpoint (no tide_checkpoint.json) "
                              f"nor a checkpoint root holding step_XXXXXXX directories")
    return step


def student_source(step_dir: str) -> tuple[str, str, Optional[str]]:
    """(student checkpoint, directory holding its config.json, tokenizer) recorded in the run's config.yaml."""
    cfg_file = Path(step_dir) / "config.yaml"
    if not cfg_file.is_file():
        raise FileNotFoundError(f"{cfg_file}: missing (every trainer checkpoint stores its resolved config)")
    raw = yaml.safe_load(cfg_file.read_text()) or {}
    student = raw.get("student") or {}
    source = student.get("checkpoint") or ""
    if not source or not Path(source).is_dir():
        raise FileNotFoundError(f"{cfg_file}: student.checkpoint {source!r} is not a directory any more; the export "
                                f"reads config.json and the tokenizer from it")
    assets = os.path.join(source, "hf") if is_mcore_dir(source) else source
    if not Path(assets, "config.json").is_file():
        raise FileNotFoundError(f"{assets}: no config.json (student.checkpoint of {cfg_file})")
    return source, assets, student.get("tokenizer") or None


def load_student_from_checkpoint(step_dir: str, pgs, dtype: torch.dtype = torch.float32):
    """Build the Qwen3 student on `pgs` (a TP=PP=1 grid of this process) and load the model weights of a
    trainer checkpoint. Returns ``(model, its megatron -> HF weight mapping, assets dir, tokenizer)``.
    Collective when torch.distributed runs.
    """
    _, assets, tokenizer = student_source(step_dir)
    arch = get_architecture("qwen3")
    args = arch.args_from_hf(assets, tp=1, pp=1, params_dtype=dtype)
    ensure_megatron_runtime(pgs)
    model = arch.build_model(args, pgs, backend="local")
    # The trainer saves the DDP-wrapped student, whose entries are named "module.<parameter>".
    wrapped = model.sharded_state_dict(prefix=DDP_PREFIX, metadata={"dp_cp_group": model.pg_collection.dp_cp})
    try:
        loaded = checkpoint_io.load({"model": wrapped}, step_dir)
    except checkpoint_io.UnsafeCheckpointError:
        raise
    except Exception as err:  # dist_checkpointing raises many types; name the directory
        raise CheckpointError(f"checkpoint {step_dir!r}: its model weights do not fit the student described by "
                              f"{assets}/config.json: {type(err).__name__}: {err}") from err
    state = {k[len(DDP_PREFIX):] if k.startswith(DDP_PREFIX) else k: v for k, v in loaded["model"].items()}
    missing = [k for k in model.load_state_dict(state, strict=False).missing_keys if not k.endswith("_extra_state")]
    if missing:
        raise CheckpointError(f"checkpoint {step_dir!r}: no weights for {missing[:5]}")
    return model.eval(), arch.mapping(args), assets, tokenizer


def export_student(checkpoint: str, out_dir: Optional[str] = None, dtype: Optional[str] = None,
                   max_shard_bytes: int = 2 * 1024**3) -> str:
    """Write the student of ``checkpoint`` as an HF Qwen3 directory (default ``<step dir>/hf``); returns it."""
    if dtype is not None and dtype not in DTYPES:
        raise ValueError(f"--dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    step_dir = resolve_step_dir(checkpoint)
    out_dir = out_dir or os.path.join(step_dir, "hf")
    init_distributed()
    rank0 = not dist.is_initialized() or dist.get_rank() == 0
    barrier = dist.barrier if dist.is_initialized() else (lambda: None)
    with build_model_grid(ParallelLayout(), name="export") as grid, \
            atomic_output_dir(out_dir, "--hf-dir", is_writer=rank0, barrier=barrier) as tmp:
        model, mapping, assets, tokenizer = load_student_from_checkpoint(step_dir, grid.pgs)
        if rank0:
            copy_hf_assets(assets, tmp)
            if tokenizer and Path(tokenizer).is_dir():  # a separate tokenizer directory named by the run
                for name in TOKENIZER_FILES:
                    if Path(tokenizer, name).is_file():
                        shutil.copy2(Path(tokenizer, name), Path(tmp, name))
            write_hf_safetensors(tmp, hf_tensors(model, mapping), max_shard_bytes,
                                 DTYPES[dtype] if dtype else None)
    return out_dir


"""Pretrain an LLaDA2-architecture MoE teacher from scratch with the masked-diffusion objective (spec §2.1, §1.3-1.5).

The teacher is megatron-core's LLaDA2 model (``models/llada2``: MoE layers, sigmoid router with expert
bias, partial RoPE), run **fully bidirectionally** with key-padding masks only, as the teacher engine runs
it. One step: ``t ~ U[eps, 1)`` per sequence, each real token masked with probability t (the teacher's own
mask id), CE weighted ``1/t`` over the masked tokens and normalised by the number of maskable tokens
(`losses.ce.bd3lm_ce_from_logprobs`, the student's formula; log-probs in fp32 at masked rows only);
megatron DDP + distributed optimizer (AdamW) + cosine LR. Pretraining is data-parallel only (TP = EP = 1
per replica): the teacher is tiny, and the trainer reshards nothing because it reads the HF layout.

The result is written as a Hugging Face LLaDA2 directory (config.json, safetensors in the released key
layout, tokenizer files), which is what the trainer's teacher loader (`training.models.build_teacher`,
`models.llada2.load_llada2_teacher`) reads. `export_llada2_hf` writes it through the registered LLaDA2
weight mapping (`models/llada2/convert.py`, megatron → HF), the one the loader reads it back with.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import torch
import torch.distributed as dist
from megatron.core import parallel_state

from tide_megatron.config import OptimConfig
from tide_megatron.diffusion.noise import IGNORE_INDEX, mask_tokens, sample_t
from tide_megatron.distributed import init_distributed, seed_model_parallel_rng
from tide_megatron.distributed.grids import ParallelLayout, build_model_grid
from tide_megatron.losses.ce import bd3lm_ce_from_logprobs
from tide_megatron.models.convert.hf_files import write_hf_safetensors
from tide_megatron.models.convert.output_dir import atomic_output_dir
from tide_megatron.models.convert.weights import hf_tensors
from tide_megatron.models.llada2.config import LLaDA2Config
from tide_megatron.models.llada2.model import build_llada2_model, key_padding_mask
from tide_megatron.models.registry import get_architecture
from tide_megatron.training.optimizer import build_lr_scheduler, build_optimizer, reduce_gradients, wrap_ddp


@dataclass
class TinyLLaDA2Shape:
    """Sizes of a small LLaDA2-MoE (first layer dense, the rest MoE with a shared expert)."""

    hidden_size: int = 128
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    head_dim: int = 32
    intermediate_size: int = 256  # the dense first layer
    num_experts: int = 4
    num_experts_per_tok: int = 2
    moe_intermediate_size: int = 64
    num_shared_experts: int = 1
    first_k_dense_replace: int = 1
    n_group: int = 1  # group-limited routing: experts in n_group groups, tokens pick topk_group of them
    topk_group: int = 1
    rope_theta: float = 600000.0
    max_position_embeddings: int = 2048


def llada2_hf_config(shape: TinyLLaDA2Shape, vocab_size: int, mask_id: int, pad_id: int, eos_id: int) -> dict:
    """config.json of an LLaDA2-MoE checkpoint with these sizes (field names of the released configs, §2.1)."""
    return {
        "architectures": ["LLaDA2MoeModelLM"], "model_type": "llada2_moe",
        "vocab_size": vocab_size, "hidden_size": shape.hidden_size, "intermediate_size": shape.intermediate_size,
        "num_hidden_layers": shape.num_hidden_layers, "num_attention_heads": shape.num_attention_heads,
        "num_key_value_heads": shape.num_key_value_heads, "head_dim": shape.head_dim, "rms_norm_eps": 1e-6,
        "rope_theta": shape.rope_theta, "partial_rotary_factor": 0.5, "rope_scaling": None,
        "num_experts": shape.num_experts, "num_shared_experts": shape.num_shared_experts,
        "num_experts_per_tok": shape.num_experts_per_tok, "n_group": shape.n_group, "topk_group": shape.topk_group,
        "routed_scaling_factor": 2.5, "moe_intermediate_size": shape.moe_intermediate_size,
        "first_k_dense_replace": shape.first_k_dense_replace, "norm_topk_prob": True, "score_function": "sigmoid",
        "moe_router_enable_expert_bias": True, "use_qk_norm": True, "use_qkv_bias": False, "use_bias": False,
        "hidden_act": "silu", "tie_word_embeddings": False,
        "max_position_embeddings": shape.max_position_embeddings,
        "pad_token_id": pad_id, "eos_token_id": eos_id, "mask_token_id": mask_id, "torch_dtype": "float32",
    }


@dataclass
class TeacherPretrainConfig:
    """Optimisation of the masked-diffusion pretraining (AdamW, warmup + cosine, clipping)."""

    steps: int = 150
    micro_batch_size: int = 16
    max_length: int = 256  # teacher tokens per sequence (longer sequences are cut)
    lr: float = 3e-3
    min_lr: float = 3e-4
    warmup_ratio: float = 0.05
    weight_decay: float = 0.0
    clip_grad: float = 1.0
    time_epsilon: float = 1e-3
    seed: int = 0
    log_interval: int = 10
    expert_bias_update_rate: float = 1e-3

    def __post_init__(self) -> None:
        for name in ("steps", "micro_batch_size", "max_length", "log_interval"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"teacher pretraining: {name} must be >= 1, got {getattr(self, name)!r}")
        if not 0 < self.time_epsilon < 1:
            raise ValueError(f"teacher pretraining: time_epsilon must lie in (0, 1), got {self.time_epsilon}")
        if not 0 <= self.min_lr <= self.lr:
            raise ValueError(f"teacher pretraining: expected 0 <= min_lr <= lr, got {self.min_lr}, {self.lr}")


@dataclass
class PretrainResult:
    losses: list[tuple[int, float]] = field(default_factory=list)  # (step, masked-diffusion loss)
    seconds: float = 0.0
    tokens: int = 0
    parameters: int = 0

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


def padded_batch(sequences: Sequence[Sequence[int]], pad_id: int, max_length: int,
                 multiple: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad (and cut) sequences to one length: ids ``[b, L]`` int64 and key-padding ``[b, L]`` bool."""
    if not sequences:
        raise ValueError("padded_batch: no sequence")
    L = min(max_length, max(len(s) for s in sequences))
    L += -L % multiple
    ids = torch.full((len(sequences), L), pad_id, dtype=torch.long)
    real = torch.zeros((len(sequences), L), dtype=torch.bool)
    for i, seq in enumerate(sequences):
        seq = list(seq)[:L]
        ids[i, : len(seq)] = torch.as_tensor(seq, dtype=torch.long)
        real[i, : len(seq)] = True
    return ids, real


def masked_diffusion_loss(model: torch.nn.Module, ids: torch.Tensor, real: torch.Tensor, mask_id: int,
                          generator: torch.Generator, time_epsilon: float) -> tuple[torch.Tensor, int]:
    """MDLM loss of one batch on the bidirectional teacher; returns (fp32 scalar, number of masked tokens).

    ``t_b = eps + (1 - eps) u_b``; real tokens masked i.i.d. with probability t_b; padding is never masked,
    never a key, and not in the normaliser: ``(1/N_real) sum_masked (1/(t+1e-6)) (-log p(x0_i))``, the
    `bd3lm_ce` formula. Logits are computed only at masked positions (§9.21: the LM head dominates here).
    """
    t = sample_t(ids.shape[0], time_epsilon, generator)
    labels = torch.where(real, ids, torch.full_like(ids, IGNORE_INDEX))
    xt, masked = mask_tokens(ids, labels, t, mask_id, generator)
    b, L = ids.shape
    module = getattr(model, "module", model)
    # The final-normed hidden states [b, L, h]; no logits are built here.
    hidden = model(xt, torch.arange(L).expand(b, L), key_padding_mask(real.long(), xt), output="hidden")
    pos, row = masked.T.nonzero(as_tuple=True)  # position-major, the order the hook-based version used
    logits, _ = module.output_layer(hidden[row, pos])  # [n, V], full vocabulary (TP = 1)
    # fp32 fused log-softmax + gather (torch's cross_entropy): the elementwise passes over [n, V] dominate here
    logp_masked = -torch.nn.functional.cross_entropy(logits.float(), ids[row, pos], reduction="none")
    token_logp = torch.zeros(b, L, dtype=torch.float32).index_put((row, pos), logp_masked)
    return bd3lm_ce_from_logprobs(token_logp, masked, real, t), int(masked.sum())


def pretrain_llada2_teacher(hf_config: dict, sequences: Sequence[Sequence[int]], cfg: TeacherPretrainConfig,
                            log: Callable[[int, dict], None] = lambda step, scalars: None):
    """Train a fresh LLaDA2 teacher on ``sequences`` (teacher token ids); returns (megatron model, result).

    Runs in the current torch.distributed world (started if needed) as one data-parallel replica per rank.
    """
    if len(sequences) < cfg.micro_batch_size:
        raise ValueError(f"teacher pretraining: {len(sequences)} sequences are fewer than one micro-batch "
                         f"({cfg.micro_batch_size})")
    init_distributed()
    lcfg = LLaDA2Config.from_dict(hf_config, source="teacher config")
    grid = build_model_grid(ParallelLayout(), name="teacher-pretrain")
    _ensure_global_data_parallel_state()
    seed_model_parallel_rng(cfg.seed)
    model = build_llada2_model(lcfg, grid.pgs, params_dtype=torch.float32)
    model.requires_grad_(True)
    model.train()
    # Aux-loss-free load balancing (LLaDA2's expert bias, selection only): megatron nudges the bias of
    # under-used experts up after each step. The released config freezes it (rate 0) for inference.
    model.config.moe_router_bias_update_rate = cfg.expert_bias_update_rate
    _init_weights(model, cfg.seed)
    ddp = wrap_ddp(model, grid.pgs)
    optim = OptimConfig(lr=cfg.lr, min_lr=cfg.min_lr, weight_decay=cfg.weight_decay, clip_grad=cfg.clip_grad,
                        warmup_ratio=cfg.warmup_ratio, lr_schedule="cosine", train_steps=cfg.steps, seed=cfg.seed)
    optimizer = build_optimizer(ddp, optim, grid.pgs, bf16=False)
    scheduler = build_lr_scheduler(optimizer, optim, cfg.steps)

    mask_id, pad_id = int(hf_config["mask_token_id"]), int(hf_config["pad_token_id"])
    rank, world = dist.get_rank(grid.pgs.dp), dist.get_world_size(grid.pgs.dp)
    gen = torch.Generator().manual_seed(cfg.seed * 7919 + rank)
    order_gen = torch.Generator().manual_seed(cfg.seed)
    order: list[int] = []
    result = PretrainResult(parameters=sum(p.numel() for p in model.parameters()))
    start = time.perf_counter()
    for step in range(1, cfg.steps + 1):
        if len(order) < cfg.micro_batch_size * world:
            order += torch.randperm(len(sequences), generator=order_gen).tolist()
        picked = order[: cfg.micro_batch_size * world][rank::world]
        del order[: cfg.micro_batch_size * world]
        ids, real = padded_batch([sequences[i] for i in picked], pad_id, cfg.max_length)
        ddp.zero_grad_buffer()
        optimizer.zero_grad()
        loss, _ = masked_diffusion_loss(ddp, ids, real, mask_id, gen, cfg.time_epsilon)
        loss.backward()
        reduce_gradients(ddp, grid.pgs)
        _, grad_norm, _ = optimizer.step()
        scheduler.step(1)
        value = float(loss.detach())
        if not math.isfinite(value):
            raise FloatingPointError(f"teacher pretraining: loss is {value} at step {step}")
        result.tokens += int(real.sum())
        result.losses.append((step, value))
        log(step, {"loss/mdlm": value, "lr": optimizer.param_groups[0]["lr"], "grad_norm": float(grad_norm or 0.0)})
    result.seconds = time.perf_counter() - start
    model.config.moe_router_bias_update_rate = 0.0
    model.eval()
    model.requires_grad_(False)
    return model, result


def _ensure_global_data_parallel_state() -> None:
    """megatron's expert-bias update reads the global tensor+data-parallel group: a pure data-parallel one."""
    if not parallel_state.model_parallel_is_initialized():
        parallel_state._GLOBAL_MEMORY_BUFFER = None  # initialize_model_parallel insists on creating it itself
        parallel_state.initialize_model_parallel()


def _init_weights(model: torch.nn.Module, seed: int) -> None:
    """Small normal init (std 0.02; output projections scaled by depth) and unit norms, reproducibly."""
    gen = torch.Generator().manual_seed(seed)
    layers = max(1, len(getattr(getattr(model, "decoder", None), "layers", [])))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.fill_(1.0) if "norm" in name else p.zero_()
            else:
                std = 0.02 / math.sqrt(2 * layers) if name.endswith(("linear_proj.weight", "linear_fc2.weight")) \
                    else 0.02
                p.copy_(torch.randn(p.shape, generator=gen) * std)


def write_random_llada2_hf(directory: Union[str, Path], shape: TinyLLaDA2Shape, vocab_size: int, mask_id: int,
                           pad_id: int, eos_id: int, seed: int = 0) -> Path:
    """Write an untrained (random) megatron LLaDA2 as an HF LLaDA2 directory; returns it (tools, benchmarks).

    Weights ~ N(0, 1/fan_in), norms 1 + N(0, 0.1^2), expert bias N(0, 0.1^2), so every path (router,
    experts, norms) matters; saved through `export_llada2_hf` in the released key layout.
    """
    hf_config = llada2_hf_config(shape, vocab_size, mask_id, pad_id, eos_id)
    init_distributed()
    grid = build_model_grid(ParallelLayout(), name="random-llada2")
    seed_model_parallel_rng(seed)
    model = build_llada2_model(LLaDA2Config.from_dict(hf_config, source="random LLaDA2 config"), grid.pgs,
                               params_dtype=torch.float32)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in list(model.named_parameters()) + list(model.named_buffers()):
            if name.endswith("expert_bias"):
                t.copy_(0.1 * torch.randn(t.shape, generator=gen))
            elif not t.is_floating_point() or name.endswith("local_tokens_per_expert"):
                continue
            elif t.dim() == 1:
                t.copy_(1.0 + 0.1 * torch.randn(t.shape, generator=gen))
            else:
                t.copy_(torch.randn(t.shape, generator=gen) / t.shape[-1] ** 0.5)
    export_llada2_hf(model, hf_config, str(directory))
    return Path(directory)


def export_llada2_hf(model: torch.nn.Module, hf_config: dict, out_dir: str, tokenizer=None,
                     extra_files: Optional[dict[str, str]] = None) -> str:
    """Write ``out_dir`` (config.json, fp32 safetensors in the released key layout, tokenizer files) atomically;
    returns it. The weights go through the registered LLaDA2 mapping (`models.registry`), megatron -> HF."""
    arch = get_architecture("llada2")
    mapping = arch.mapping(arch.args_from_hf(hf_config, source="teacher config"))
    with atomic_output_dir(out_dir, "teacher output directory") as tmp:
        write_hf_safetensors(tmp, hf_tensors(model, mapping), dtype=torch.float32)
        Path(tmp, "config.json").write_text(json.dumps(hf_config, indent=2))
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        for name, text in (extra_files or {}).items():
            Path(tmp, name).write_text(text)
    return out_dir

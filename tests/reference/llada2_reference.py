"""A plain single-process PyTorch LLaDA2-MoE, written from spec §2.1 (not from the production code).

It reads the Hugging Face layout (config.json fields, safetensors key names) directly, so it is the
independent side of the megatron parity tests. Its parameter names are the released
safetensors key names, so `state_dict()` is the HF layout. The file is self-contained (torch + transformers only):
the tiny-checkpoint writer copies it into a checkpoint directory as the checkpoint's own modeling
code, which `AutoModel...from_pretrained(trust_remote_code=True)` then loads.

Shapes are batch-first. `forward(input_ids, attention_mask)` takes a 0/1 key-padding mask [b, L]
and applies a large finite negative on padded keys (§9 pitfall 17); attention is bidirectional. A 4-D
float mask [b, 1, L, L] is added to the scores as given.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import MaskedLMOutput


class LLaDA2MoeConfig(PretrainedConfig):
    """The HF config fields of LLaDA2.0-mini that the architecture depends on."""

    model_type = "llada2_moe"

    def __init__(self, vocab_size=157184, hidden_size=2048, intermediate_size=5120, num_hidden_layers=20,
                 num_attention_heads=16, num_key_value_heads=4, head_dim=128, rms_norm_eps=1e-6,
                 rope_theta=600000.0, partial_rotary_factor=0.5, num_experts=256, num_shared_experts=1,
                 num_experts_per_tok=8, n_group=8, topk_group=4, routed_scaling_factor=2.5,
                 moe_intermediate_size=512, first_k_dense_replace=1, norm_topk_prob=True,
                 score_function="sigmoid", moe_router_enable_expert_bias=True, use_qk_norm=True,
                 use_qkv_bias=False, use_bias=False, tie_word_embeddings=False, hidden_act="silu",
                 max_position_embeddings=16384, **kwargs):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_key_value_heads
        self.head_dim = head_dim
        self.rms_norm_eps = rms_norm_eps
        self.rope_theta = rope_theta
        self.partial_rotary_factor = partial_rotary_factor
        self.num_experts = num_experts
        self.num_shared_experts = num_shared_experts
        self.num_experts_per_tok = num_experts_per_tok
        self.n_group = n_group
        self.topk_group = topk_group
        self.routed_scaling_factor = routed_scaling_factor
        self.moe_intermediate_size = moe_intermediate_size
        self.first_k_dense_replace = first_k_dense_replace
        self.norm_topk_prob = norm_topk_prob
        self.score_function = score_function
        self.moe_router_enable_expert_bias = moe_router_enable_expert_bias
        self.use_qk_norm = use_qk_norm
        self.use_qkv_bias = use_qkv_bias
        self.use_bias = use_bias
        self.hidden_act = hidden_act
        self.max_position_embeddings = max_position_embeddings
        super().__init__(tie_word_embeddings=tie_word_embeddings, **kwargs)


class RMSNorm(nn.Module):
    """RMSNorm computed in fp32, scaled by a learned weight."""

    def __init__(self, size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        return (self.weight.float() * xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype)


class SwiGLU(nn.Module):
    """down(silu(gate(x)) * up(x)), the HF module names gate_proj / up_proj / down_proj."""

    def __init__(self, hidden: int, ffn: int):
        super().__init__()
        self.gate_proj = nn.Linear(hidden, ffn, bias=False)
        self.up_proj = nn.Linear(hidden, ffn, bias=False)
        self.down_proj = nn.Linear(ffn, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Router(nn.Module):
    """Sigmoid router: bias only for selection, group-limited top-k, normalise, scale (§9 pitfall 22)."""

    def __init__(self, cfg: LLaDA2MoeConfig):
        super().__init__()
        self.cfg = cfg
        self.weight = nn.Parameter(torch.zeros(cfg.num_experts, cfg.hidden_size))
        self.register_buffer("expert_bias", torch.zeros(cfg.num_experts))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.cfg
        scores = torch.sigmoid(x.float() @ self.weight.float().t())  # [n, E]
        biased = scores + self.expert_bias.float()
        n, e = biased.shape
        per_group = biased.view(n, cfg.n_group, e // cfg.n_group)
        group_score = per_group.topk(2, dim=-1).values.sum(-1)  # a group's score: sum of its top-2
        keep_groups = group_score.topk(cfg.topk_group, dim=-1).indices
        allowed = torch.zeros(n, cfg.n_group, dtype=torch.bool, device=x.device)
        allowed[torch.arange(n, device=x.device)[:, None], keep_groups] = True
        allowed = allowed[:, :, None].expand(n, cfg.n_group, e // cfg.n_group).reshape(n, e)
        chosen = biased.masked_fill(~allowed, float("-inf")).topk(cfg.num_experts_per_tok, dim=-1).indices
        weights = scores.gather(1, chosen)  # unbiased scores of the chosen experts
        if cfg.norm_topk_prob and cfg.num_experts_per_tok > 1:
            weights = weights / (weights.sum(-1, keepdim=True) + 1e-20)
        return chosen, weights * cfg.routed_scaling_factor


class MoE(nn.Module):
    """Routed experts (each token through its top-k, weighted) plus the shared expert(s)."""

    def __init__(self, cfg: LLaDA2MoeConfig):
        super().__init__()
        self.gate = Router(cfg)
        self.experts = nn.ModuleList(SwiGLU(cfg.hidden_size, cfg.moe_intermediate_size)
                                     for _ in range(cfg.num_experts))
        self.shared_experts = (SwiGLU(cfg.hidden_size, cfg.moe_intermediate_size * cfg.num_shared_experts)
                               if cfg.num_shared_experts else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        chosen, weights = self.gate(flat)
        out = torch.zeros_like(flat, dtype=torch.float32)
        for expert_id, expert in enumerate(self.experts):
            token_idx, slot = (chosen == expert_id).nonzero(as_tuple=True)
            if token_idx.numel():
                out.index_add_(0, token_idx, expert(flat[token_idx]).float() * weights[token_idx, slot, None])
        out = out.to(x.dtype)
        if self.shared_experts is not None:
            out = out + self.shared_experts(flat)
        return out.view(shape)


def rotate_partial(x: torch.Tensor, positions: torch.Tensor, rotary_dim: int, theta: float) -> torch.Tensor:
    """RoPE (rotate-half convention) on the first ``rotary_dim`` channels of each head; rest untouched."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, rotary_dim, 2, dtype=torch.float64) / rotary_dim))
    angles = positions.double()[..., None] * inv_freq  # [b, L, rotary_dim/2]
    cos = torch.cat([angles.cos(), angles.cos()], -1).float()[:, None]  # [b, 1, L, rotary_dim]
    sin = torch.cat([angles.sin(), angles.sin()], -1).float()[:, None]
    rot, rest = x[..., :rotary_dim], x[..., rotary_dim:]
    half = rotary_dim // 2
    rotated = torch.cat([-rot[..., half:], rot[..., :half]], -1)
    return torch.cat([(rot.float() * cos + rotated.float() * sin).to(x.dtype), rest], -1)


class Attention(nn.Module):
    """Fused-QKV GQA with QK RMSNorm, partial RoPE, bidirectional attention from an explicit mask."""

    def __init__(self, cfg: LLaDA2MoeConfig):
        super().__init__()
        self.cfg = cfg
        hd = cfg.head_dim
        self.query_key_value = nn.Linear(cfg.hidden_size, (cfg.num_attention_heads + 2 * cfg.num_key_value_heads) * hd,
                                         bias=cfg.use_qkv_bias)
        self.dense = nn.Linear(cfg.num_attention_heads * hd, cfg.hidden_size, bias=cfg.use_bias)
        self.query_layernorm = RMSNorm(hd, cfg.rms_norm_eps)
        self.key_layernorm = RMSNorm(hd, cfg.rms_norm_eps)

    def forward(self, x: torch.Tensor, positions: torch.Tensor, additive_mask: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        b, L, _ = x.shape
        nh, nkv, hd = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        q, k, v = self.query_key_value(x).view(b, L, nh + 2 * nkv, hd).split([nh, nkv, nkv], dim=2)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [b, heads, L, hd]
        if cfg.use_qk_norm:
            q, k = self.query_layernorm(q), self.key_layernorm(k)
        rotary_dim = int(hd * cfg.partial_rotary_factor)
        q = rotate_partial(q, positions, rotary_dim, cfg.rope_theta)
        k = rotate_partial(k, positions, rotary_dim, cfg.rope_theta)
        k = k.repeat_interleave(nh // nkv, dim=1)
        v = v.repeat_interleave(nh // nkv, dim=1)
        scores = (q.float() @ k.float().transpose(-1, -2)) / math.sqrt(hd) + additive_mask
        ctx = (scores.softmax(-1) @ v.float()).to(x.dtype)
        return self.dense(ctx.transpose(1, 2).reshape(b, L, nh * hd))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: LLaDA2MoeConfig, index: int):
        super().__init__()
        self.cfg = cfg
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.attention = Attention(cfg)
        self.mlp = MoE(cfg) if index >= cfg.first_k_dense_replace else SwiGLU(cfg.hidden_size, cfg.intermediate_size)

    def forward(self, x, positions, additive_mask):
        x = x + self.attention(self.input_layernorm(x), positions, additive_mask)
        return x + self.mlp(self.post_attention_layernorm(x))


class LLaDA2MoeModelLM(PreTrainedModel):
    """The whole network: embeddings, decoder layers, final RMSNorm, untied LM head; logits unshifted."""

    config_class = LLaDA2MoeConfig
    base_model_prefix = "model"
    _no_split_modules = ["DecoderLayer"]

    def __init__(self, config: LLaDA2MoeConfig):
        super().__init__(config)
        self.model = nn.Module()
        self.model.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.model.layers = nn.ModuleList(DecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.model.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def _init_weights(self, module):  # weights always come from the checkpoint
        pass

    def additive_mask(self, attention_mask: Optional[torch.Tensor], b: int, L: int, device) -> torch.Tensor:
        """A float mask added to the attention scores: a 2-D 0/1 mask is key padding (bidirectional); a 4-D
        float mask [b, 1, L, L] is used as given (0 = may attend, large negative = blocked)."""
        additive = torch.zeros(b, 1, 1, L, dtype=torch.float32, device=device)
        if attention_mask is None:
            return additive
        if attention_mask.dim() == 4:
            if not attention_mask.is_floating_point():
                raise ValueError("a 4-D attention_mask must be an additive float mask")
            return attention_mask.float()
        return additive.masked_fill(~attention_mask.bool()[:, None, None, :], -1e30)

    def forward(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                position_ids: Optional[torch.Tensor] = None, **kwargs) -> MaskedLMOutput:
        b, L = input_ids.shape
        if position_ids is None:
            position_ids = torch.arange(L, device=input_ids.device).expand(b, L)
        additive = self.additive_mask(attention_mask, b, L, input_ids.device)
        x = self.model.word_embeddings(input_ids)
        for layer in self.model.layers:
            x = layer(x, position_ids, additive)
        x = self.model.norm(x)
        return MaskedLMOutput(logits=self.lm_head(x).float())

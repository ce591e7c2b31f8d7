"""A tiny random WeDLM checkpoint (Qwen3 layout, config.json model_type 'wedlm') and its transformers
reference, `transformers.Qwen3ForCausalLM` with the same weights (for tests only, §2.2)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from tide_megatron.diffusion.masks import block_diffusion_mask

TINY_WEDLM = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=4, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=16, rms_norm_eps=1e-6, rope_theta=1e6, tie_word_embeddings=False,
                  max_position_embeddings=512, attention_bias=False, hidden_act="silu")


def qwen3_reference(state: dict[str, torch.Tensor], tied: bool = False):
    """transformers' own Qwen3ForCausalLM (fp32, SDPA attention) holding ``state``; with ``tied`` the LM head
    is the embedding (``state`` then has no ``lm_head.weight``)."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    config = Qwen3Config(**{**TINY_WEDLM, "tie_word_embeddings": tied}, attn_implementation="sdpa")
    model = Qwen3ForCausalLM(config).float()
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or set(missing) - ({"lm_head.weight"} if tied else set()):
        raise ValueError(f"reference weights do not fit: missing {missing}, unexpected {unexpected}")
    model.tie_weights()
    return model.eval()


def write_tiny_wedlm(directory: Path, seed: int = 0, tied: bool = False) -> Path:
    """Random Qwen3 weights (scaled so every layer matters) saved as a WeDLM HF directory; ``tied`` writes a
    checkpoint whose LM head is its embedding (``tie_word_embeddings``, no ``lm_head.weight``)."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(Qwen3Config(**TINY_WEDLM)).float()
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for name, p in model.state_dict().items():
        if name.endswith("norm.weight"):
            state[name] = 1.0 + 0.2 * torch.randn(p.shape, generator=gen)
        elif name.endswith("embed_tokens.weight"):
            state[name] = torch.randn(p.shape, generator=gen)
        else:
            state[name] = torch.randn(p.shape, generator=gen) / p.shape[-1] ** 0.5
    if tied:
        del state["lm_head.weight"]
    save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})
    config = {**TINY_WEDLM, "tie_word_embeddings": tied, "model_type": "wedlm", "architectures": ["WeDLMForCausalLM"], "qk_norm": True,
              "layer_types": ["full_attention"] * TINY_WEDLM["num_hidden_layers"], "pad_token_id": 126}
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    return directory


def load_reference(directory: Path):
    tied = bool(json.loads((Path(directory) / "config.json").read_text()).get("tie_word_embeddings", False))
    return qwen3_reference(load_file(str(Path(directory) / "model.safetensors")), tied=tied)


def wedlm_inputs(x0: torch.Tensor, xt: torch.Tensor, block_size: int,
                 attention_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One pass's teacher input written from §2.2: ids [x0 ; xt] [b, 2L], position ids [0..L-1, 0..L-1] and the
    bool [b, 1, 2L, 2L] "may attend" mask; rows and columns of padded positions (attention_mask 0) are blocked
    in both halves (§9 pitfall 17)."""
    if x0.shape != xt.shape:
        raise ValueError(f"x0 {tuple(x0.shape)} and xt {tuple(xt.shape)} must have the same shape")
    b, L = x0.shape
    ids = torch.cat([x0, xt], dim=1)
    pos = torch.arange(L, device=x0.device).repeat(2).expand(b, 2 * L)
    allowed = block_diffusion_mask(L, block_size, "x0_xt", device=x0.device)[None, None].expand(b, 1, 2 * L, 2 * L)
    if attention_mask is not None:
        real = attention_mask.bool().repeat(1, 2)
        allowed = allowed & real[:, None, :, None] & real[:, None, None, :]
    return ids, pos, allowed


def xt_rows(rows: torch.Tensor, L: int) -> torch.Tensor:
    """(batch, position in xt) pairs → rows of the [x0 ; xt] teacher sequence (the second half, §9.4)."""
    return torch.stack([rows[:, 0], rows[:, 1] + L], dim=1)

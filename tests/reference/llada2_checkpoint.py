"""Write a tiny random LLaDA2-MoE checkpoint in the released Hugging Face layout (for tests only).

The directory gets config.json (with `auto_map`, as released checkpoints carry), safetensors shards with
an index (so loaders must stream across files), and `modeling_llada2_moe.py`, which makes the directory
loadable with `trust_remote_code=True`. By default that file has the published LLaDA2 file's mask handling
(`llada2_published_masking.py`: a 2-D mask containing a 0 becomes causal, a 4-D float mask is used as
given); ``modeling="published_imports"`` adds the published file's import of
`transformers.modeling_attn_mask_utils`, a module transformers 5 no longer has.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from tests.reference.llada2_reference import LLaDA2MoeConfig, LLaDA2MoeModelLM

TINY_LLADA2 = dict(
    vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=4, num_attention_heads=4,
    num_key_value_heads=2, head_dim=16, rms_norm_eps=1e-6, rope_theta=600000.0, partial_rotary_factor=0.5,
    num_experts=8, num_shared_experts=1, num_experts_per_tok=4, n_group=4, topk_group=2,
    routed_scaling_factor=2.5, moe_intermediate_size=32, first_k_dense_replace=1, norm_topk_prob=True,
    score_function="sigmoid", moe_router_enable_expert_bias=True, use_qk_norm=True, use_qkv_bias=False,
    use_bias=False, tie_word_embeddings=False, max_position_embeddings=512, pad_token_id=126, mask_token_id=125,
)


def build_random_reference(seed: int = 0, **overrides) -> LLaDA2MoeModelLM:
    """A reference model with random weights scaled so every path (router, experts, norms) matters."""
    cfg = LLaDA2MoeConfig(**{**TINY_LLADA2, **overrides})
    model = LLaDA2MoeModelLM(cfg)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in list(model.named_parameters()) + list(model.named_buffers()):
            if name.endswith("layernorm.weight") or name.endswith("norm.weight"):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=gen))
            elif name.endswith("expert_bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
            elif name.endswith("word_embeddings.weight"):
                p.copy_(torch.randn(p.shape, generator=gen))
            else:
                p.copy_(torch.randn(p.shape, generator=gen) / p.shape[-1] ** 0.5)
    return model.eval()


MODELING_FILES = ("published", "published_imports")
PUBLISHED_IMPORT = "from transformers.modeling_attn_mask_utils import _prepare_4d_causal_attention_mask  # noqa\n"


def write_tiny_llada2(directory: Path, seed: int = 0, num_shards: int = 2, drop_keys: tuple[str, ...] = (),
                      config_overrides: dict | None = None, modeling: str = "published", **overrides) -> Path:
    """Save a random reference model in the HF layout; returns the directory."""
    if modeling not in MODELING_FILES:
        raise ValueError(f"modeling must be one of {MODELING_FILES}, got {modeling!r}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model = build_random_reference(seed, **overrides)
    state = {k: v.contiguous() for k, v in model.state_dict().items() if k not in drop_keys}
    keys = sorted(state)
    weight_map = {}
    for shard in range(num_shards):
        name = f"model-{shard + 1:05d}-of-{num_shards:05d}.safetensors"
        part = {k: state[k] for k in keys[shard::num_shards]}
        save_file(part, str(directory / name), metadata={"format": "pt"})
        weight_map.update({k: name for k in part})
    (directory / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    config = model.config.to_dict()
    config.update(architectures=["LLaDA2MoeModelLM"], model_type="llada2_moe",
                  auto_map={"AutoConfig": "modeling_llada2_moe.LLaDA2MoeConfig",
                            "AutoModelForCausalLM": "modeling_llada2_moe.LLaDA2MoeModelLM"})
    config.update(config_overrides or {})
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    here = Path(__file__).parent
    shutil.copyfile(here / "llada2_reference.py", directory / "llada2_reference.py")
    code = (here / "llada2_published_masking.py").read_text()
    if modeling == "published_imports":
        future = "from __future__ import annotations\n"
        code = code.replace(future, future + PUBLISHED_IMPORT, 1)
    (directory / "modeling_llada2_moe.py").write_text(code)
    return directory

"""HF LLaDA2-MoE safetensors → this rank's shard of the megatron-core teacher, streamed (§2.1).

Key map (HF → megatron, per layer i; local layer j = i - pipeline offset):
  model.word_embeddings                         → embedding.word_embeddings        (vocab rows of this TP rank)
  model.layers.i.input_layernorm                → decoder.layers.j.input_layernorm (or linear_qkv.layer_norm_weight)
  model.layers.i.attention.query_key_value      → self_attention.linear_qkv        ([q;k;v] → per-group [q_g;k_g;v_g])
  model.layers.i.attention.{query,key}_layernorm→ self_attention.{q,k}_layernorm
  model.layers.i.attention.dense                → self_attention.linear_proj       (input columns of this TP rank)
  model.layers.i.post_attention_layernorm       → pre_mlp_layernorm (or mlp.linear_fc1.layer_norm_weight)
  model.layers.i.mlp.{gate,up,down}_proj        → mlp.linear_fc1 = [gate;up], mlp.linear_fc2 (dense layers)
  model.layers.i.mlp.gate.{weight,expert_bias}  → mlp.router.{weight,expert_bias}
  model.layers.i.mlp.experts.e.*                → mlp.experts.local_experts.k.* (e = ep_rank * E/ep + k)
  model.layers.i.mlp.shared_experts.*           → mlp.shared_experts.*
  model.norm, lm_head                           → decoder.final_layernorm, output_layer (vocab rows)
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

import torch
import torch.distributed as dist
from megatron.core.process_groups_config import ProcessGroupCollection

from tide_megatron.dtypes import DTYPES
from tide_megatron.models.llada2.config import LLaDA2Config
from tide_megatron.models.safetensors_reader import CheckpointError, SafetensorsReader

_LAYER = re.compile(r"^decoder\.layers\.(\d+)\.(.+)$")
_SEQ_EXPERT = re.compile(r"^mlp\.experts\.local_experts\.(\d+)\.(linear_fc[12])\.weight$")
_GROUPED_EXPERT = re.compile(r"^mlp\.experts\.(linear_fc[12])\.weight(\d+)$")


class _ShardReader:
    """Reads HF tensors already cut to this rank's TP / EP / ETP shard."""

    def __init__(self, reader: SafetensorsReader, cfg: LLaDA2Config, pgs: ProcessGroupCollection):
        self.r, self.cfg = reader, cfg
        self.tp, self.tp_rank = dist.get_world_size(pgs.tp), dist.get_rank(pgs.tp)
        self.ep, self.ep_rank = dist.get_world_size(pgs.ep), dist.get_rank(pgs.ep)
        self.etp, self.etp_rank = dist.get_world_size(pgs.expt_tp), dist.get_rank(pgs.expt_tp)

    @staticmethod
    def _part(n: int, size: int, rank: int) -> slice:
        return slice(rank * n // size, (rank + 1) * n // size)

    def full(self, key: str, shape: tuple[int, ...], purpose: str) -> torch.Tensor:
        return self.r.read(key, purpose, expect_shape=shape)

    def vocab_rows(self, key: str, purpose: str) -> torch.Tensor:
        c = self.cfg
        return self.r.read(key, purpose, rows=self._part(c.vocab_size, self.tp, self.tp_rank),
                           expect_shape=(c.vocab_size, c.hidden_size))

    def qkv(self, prefix: str) -> torch.Tensor:
        """Fused HF [q heads; k heads; v heads] rows → megatron's per-query-group [q_g; k_g; v_g] rows."""
        c = self.cfg
        hd, nh, ng, h = c.head_dim, c.num_attention_heads, c.num_key_value_heads, c.hidden_size
        key = f"{prefix}.attention.query_key_value.weight"
        shape = self.r.shape(key, "attention QKV")
        if shape != ((nh + 2 * ng) * hd, h):
            raise CheckpointError(f"{self.r.key_to_file[key]}: '{key}' has shape {shape}, expected "
                                  f"{((nh + 2 * ng) * hd, h)} = ((heads + 2 kv heads) x head_dim, hidden)")
        g0, g1 = self.tp_rank * ng // self.tp, (self.tp_rank + 1) * ng // self.tp
        per = nh // ng
        q = self.r.read(key, "attention QKV", rows=slice(g0 * per * hd, g1 * per * hd)).view(g1 - g0, per * hd, h)
        k = self.r.read(key, "attention QKV", rows=slice(nh * hd + g0 * hd, nh * hd + g1 * hd)).view(g1 - g0, hd, h)
        v = self.r.read(key, "attention QKV", rows=slice((nh + ng) * hd + g0 * hd, (nh + ng) * hd + g1 * hd)
                        ).view(g1 - g0, hd, h)
        return torch.cat([q, k, v], dim=1).reshape(-1, h)

    def row_parallel(self, key: str, in_features: int, purpose: str, size: int, rank: int) -> torch.Tensor:
        c = self.cfg
        return self.r.read(key, purpose, cols=self._part(in_features, size, rank),
                           expect_shape=(c.hidden_size, in_features))

    def gated_fc1(self, prefix: str, ffn: int, purpose: str, size: int, rank: int) -> torch.Tensor:
        """megatron's gated fc1 shard is [gate rows of this rank; up rows of this rank]."""
        c = self.cfg
        rows = self._part(ffn, size, rank)
        gate = self.r.read(f"{prefix}.gate_proj.weight", purpose, rows=rows, expect_shape=(ffn, c.hidden_size))
        up = self.r.read(f"{prefix}.up_proj.weight", purpose, rows=rows, expect_shape=(ffn, c.hidden_size))
        return torch.cat([gate, up], dim=0)


def _hf_tensor(src: _ShardReader, name: str, global_layer: Optional[int], local_expert_offset: int) -> torch.Tensor:
    """The HF tensor (already sharded) for one megatron state-dict entry, or KeyError if unmapped."""
    c = src.cfg
    if global_layer is None:
        if name == "embedding.word_embeddings.weight":
            return src.vocab_rows("model.word_embeddings.weight", "input embeddings")
        if name == "output_layer.weight":
            return src.vocab_rows("lm_head.weight" if not c.tie_word_embeddings else "model.word_embeddings.weight",
                                  "output layer")
        if name == "decoder.final_layernorm.weight":
            return src.full("model.norm.weight", (c.hidden_size,), "final norm")
        raise KeyError(name)
    p = f"model.layers.{global_layer}"
    hd = c.head_dim
    if name in ("input_layernorm.weight", "self_attention.linear_qkv.layer_norm_weight"):
        return src.full(f"{p}.input_layernorm.weight", (c.hidden_size,), "input norm")
    if name == "self_attention.linear_qkv.weight":
        return src.qkv(p)
    if name == "self_attention.q_layernorm.weight":
        return src.full(f"{p}.attention.query_layernorm.weight", (hd,), "query norm")
    if name == "self_attention.k_layernorm.weight":
        return src.full(f"{p}.attention.key_layernorm.weight", (hd,), "key norm")
    if name == "self_attention.linear_proj.weight":
        return src.row_parallel(f"{p}.attention.dense.weight", c.num_attention_heads * hd, "attention output",
                                src.tp, src.tp_rank)
    if name in ("pre_mlp_layernorm.weight", "mlp.linear_fc1.layer_norm_weight"):
        return src.full(f"{p}.post_attention_layernorm.weight", (c.hidden_size,), "pre-FFN norm")
    if name == "mlp.linear_fc1.weight":
        return src.gated_fc1(f"{p}.mlp", c.intermediate_size, "dense FFN", src.tp, src.tp_rank)
    if name == "mlp.linear_fc2.weight":
        return src.row_parallel(f"{p}.mlp.down_proj.weight", c.intermediate_size, "dense FFN", src.tp, src.tp_rank)
    if name == "mlp.router.weight":
        return src.full(f"{p}.mlp.gate.weight", (c.num_experts, c.hidden_size), "router")
    if name == "mlp.router.expert_bias":
        return src.full(f"{p}.mlp.gate.expert_bias", (c.num_experts,), "router expert bias")
    shared_ffn = c.num_shared_experts * c.moe_intermediate_size
    if name == "mlp.shared_experts.linear_fc1.weight":
        return src.gated_fc1(f"{p}.mlp.shared_experts", shared_ffn, "shared expert", src.tp, src.tp_rank)
    if name == "mlp.shared_experts.linear_fc2.weight":
        return src.row_parallel(f"{p}.mlp.shared_experts.down_proj.weight", shared_ffn, "shared expert",
                                src.tp, src.tp_rank)
    match = _SEQ_EXPERT.match(name)
    if match:
        local, which = int(match.group(1)), match.group(2)
    else:
        match = _GROUPED_EXPERT.match(name)
        if not match:
            raise KeyError(name)
        which, local = match.group(1), int(match.group(2))
    e = local_expert_offset + local
    ep_prefix = f"{p}.mlp.experts.{e}"
    ffn = c.moe_intermediate_size
    if which == "linear_fc1":
        return src.gated_fc1(ep_prefix, ffn, f"expert {e}", src.etp, src.etp_rank)
    return src.row_parallel(f"{ep_prefix}.down_proj.weight", ffn, f"expert {e}", src.etp, src.etp_rank)


def load_llada2_from_hf(model: torch.nn.Module, hf_dir: Path, cfg: LLaDA2Config, pgs: ProcessGroupCollection,
                        expected_vocab_size: Optional[int] = None) -> None:
    """Fill ``model`` (this rank's megatron shard) from the HF checkpoint in ``hf_dir``, tensor by tensor."""
    hf_dir = Path(hf_dir)
    reader = SafetensorsReader(hf_dir)
    if expected_vocab_size is not None and expected_vocab_size != cfg.vocab_size:
        raise CheckpointError(f"{hf_dir / 'config.json'}: vocab_size={cfg.vocab_size}, but the tokenizer / "
                              f"caller expects {expected_vocab_size}")
    if "model.word_embeddings.weight" in reader:
        rows = reader.shape("model.word_embeddings.weight")[0]
        if rows != cfg.vocab_size:
            raise CheckpointError(f"{reader.key_to_file['model.word_embeddings.weight']}: embedding has {rows} "
                                  f"rows, config.json vocab_size={cfg.vocab_size}: vocabulary mismatch")
    src = _ShardReader(reader, cfg, pgs)
    experts_per_rank = cfg.num_experts // src.ep
    layers = {}
    if hasattr(model, "decoder"):
        layers = {j: layer.layer_number - 1 for j, layer in enumerate(model.decoder.layers)}
    state = model.state_dict(keep_vars=True)
    with torch.no_grad():
        for name, target in state.items():
            if name.endswith("_extra_state") or not isinstance(target, torch.Tensor):
                continue
            m = _LAYER.match(name)
            global_layer, local_name = (layers[int(m.group(1))], m.group(2)) if m else (None, name)
            try:
                value = _hf_tensor(src, local_name, global_layer, src.ep_rank * experts_per_rank)
            except KeyError:
                if name.endswith("local_tokens_per_expert"):
                    continue  # router load statistics, not weights
                raise CheckpointError(f"megatron parameter '{name}' has no mapping from the LLaDA2 HF layout")
            if tuple(value.shape) != tuple(target.shape):
                raise CheckpointError(f"{hf_dir}: shard for '{name}' has shape {tuple(value.shape)}, the model "
                                      f"expects {tuple(target.shape)}")
            target.copy_(value.to(target.dtype))
    reader.close()


def compare_with_remote_code(model: torch.nn.Module, cfg: LLaDA2Config, hf_dir: Path, pgs: ProcessGroupCollection,
                             seq_len: int = 16, batch_size: int = 2, seed: int = 0,
                             trust_remote_code: bool = True) -> float:
    """Max |logit difference| between a built megatron teacher (pp=1) and the checkpoint's own HF modeling.

    Released LLaDA2 checkpoints carry their modeling code (config.json ``auto_map``), so the HF side is
    loaded with ``trust_remote_code``. fp32 on both sides; bidirectional attention with the last
    sequence key-padded (§2.1). Collective over ``pgs.tp``.
    """
    from transformers import AutoModelForCausalLM

    from tide_megatron.models.llada2.model import forward_llada2

    if dist.get_world_size(pgs.pp) != 1:
        raise ValueError("verify runs the megatron model without a pipeline: use a layout with pp=1")
    try:
        hf = AutoModelForCausalLM.from_pretrained(str(hf_dir), trust_remote_code=trust_remote_code,
                                                  dtype=torch.float32).eval()
    except (ValueError, OSError) as err:
        raise CheckpointError(f"{hf_dir}: transformers could not load the checkpoint's own modeling code "
                              f"(trust_remote_code={trust_remote_code}): {err}") from err
    tp = dist.get_world_size(pgs.tp)
    seq_len += (-seq_len) % tp  # sequence parallelism needs L % tp == 0
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, cfg.vocab_size, (batch_size, seq_len), generator=gen)
    mask = torch.ones_like(ids)
    mask[-1, seq_len - max(1, seq_len // 4):] = 0
    with torch.no_grad():
        theirs = hf(input_ids=ids, attention_mask=mask).logits.float()
        ours = forward_llada2(model, ids, mask).float()
    if tp > 1:
        parts = [torch.empty_like(ours) for _ in range(tp)]
        dist.all_gather(parts, ours.contiguous(), group=pgs.tp)
        ours = torch.cat(parts, -1)
    return (ours - theirs)[mask.bool()].abs().max().item()


def verify_llada2_against_hf(hf_dir: Path, pgs: ProcessGroupCollection, **kwargs) -> float:
    """Load the HF checkpoint straight into megatron (no dist checkpoint) and `compare_with_remote_code`."""
    from tide_megatron.models.llada2.model import build_llada2_model

    cfg = LLaDA2Config.from_pretrained(hf_dir)
    model = build_llada2_model(cfg, pgs, torch.float32)
    load_llada2_from_hf(model, Path(hf_dir), cfg, pgs)
    return compare_with_remote_code(model, cfg, Path(hf_dir), pgs, **kwargs)


# ---- tide-convert: HF directory <-> megatron dist checkpoint -------------------------------------------
META_FILE = "tide_model.json"
HF_ASSETS = "hf"


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def _sharded_state_dict(model: torch.nn.Module) -> dict:
    return model.sharded_state_dict(metadata={"dp_cp_group": model.pg_collection.dp_cp})


def hf_to_mcore(hf_dir: str, out_dir: str, tp: int = 1, pp: int = 1, ep: int = 1, dtype: str = "bfloat16") -> None:
    """Convert an HF LLaDA2 directory into a megatron dist checkpoint written at TP x PP x EP (collective).

    Tensors are streamed slice by slice; `out_dir` appears only when complete. The small HF files
    (config.json, tokenizer, the checkpoint's own modeling code) are kept under `hf/`.
    """
    from megatron.core import dist_checkpointing

    from tide_megatron.distributed.grids import ParallelLayout, build_model_grid
    from tide_megatron.models.conversion import atomic_output_dir, copy_hf_assets
    from tide_megatron.models.llada2.model import build_llada2_model

    if dtype not in DTYPES:
        raise ValueError(f"--dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    cfg = LLaDA2Config.from_pretrained(hf_dir)
    layout = ParallelLayout(tp=tp, pp=pp, ep=ep)
    cfg.check_layout(layout)
    grid = build_model_grid(layout, "convert")
    model = build_llada2_model(cfg, grid.pgs, DTYPES[dtype])
    load_llada2_from_hf(model, Path(hf_dir), cfg, grid.pgs)
    rank0 = not dist.is_initialized() or dist.get_rank() == 0
    with atomic_output_dir(out_dir, "--mcore-dir", is_writer=rank0, barrier=_barrier) as tmp:
        dist_checkpointing.save(_sharded_state_dict(model), tmp)
        if rank0:
            import json

            copy_hf_assets(str(hf_dir), str(Path(tmp) / HF_ASSETS))
            (Path(tmp) / META_FILE).write_text(json.dumps(
                {"architecture": "llada2", "tp": tp, "pp": pp, "ep": ep, "dtype": dtype}, indent=2))


def load_llada2_mcore(mcore_dir: str, pgs: ProcessGroupCollection, params_dtype: torch.dtype = torch.bfloat16):
    """Build the teacher for ``pgs`` and load a dist checkpoint written by `hf_to_mcore` (any layout)."""
    import json

    from megatron.core import dist_checkpointing

    from tide_megatron.models.llada2.model import build_llada2_model

    meta_path = Path(mcore_dir) / META_FILE
    if not meta_path.is_file():
        raise CheckpointError(f"{meta_path}: missing (expected a directory written by tide-convert hf-to-mcore)")
    meta = json.loads(meta_path.read_text())
    if meta.get("architecture") != "llada2":
        raise CheckpointError(f"{meta_path}: architecture={meta.get('architecture')!r}, expected 'llada2'")
    cfg = LLaDA2Config.from_pretrained(Path(mcore_dir) / HF_ASSETS)
    model = build_llada2_model(cfg, pgs, params_dtype)
    state = dist_checkpointing.load(_sharded_state_dict(model), str(mcore_dir))
    model.load_state_dict(state, strict=False)
    return model, cfg


def verify(hf_dir: str, mcore_dir: str, seq_len: int = 16, batch: int = 2, seed: int = 0,
           log=print, trust_remote_code: bool = True) -> dict[str, float]:
    """Logits of the converted megatron teacher vs the HF checkpoint's own modeling code (trust_remote_code).

    Collective; the dist checkpoint is resharded to one TP group spanning the world when the heads
    allow it, else TP=1.
    """
    from tide_megatron.distributed.grids import ParallelLayout, build_model_grid

    world = dist.get_world_size() if dist.is_initialized() else 1
    cfg = LLaDA2Config.from_pretrained(Path(mcore_dir) / HF_ASSETS)
    layout = ParallelLayout(tp=world)
    try:
        cfg.check_layout(layout)
    except ValueError:
        layout = ParallelLayout()
    grid = build_model_grid(layout, "verify")
    model, cfg = load_llada2_mcore(mcore_dir, grid.pgs, torch.float32)
    diff = compare_with_remote_code(model, cfg, Path(hf_dir), grid.pgs, seq_len=seq_len, batch_size=batch,
                                    seed=seed, trust_remote_code=trust_remote_code)
    log(f"bidirectional+key_padding: max abs logit difference = {diff:.3e}")
    return {"bidirectional": diff}

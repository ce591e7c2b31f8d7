"""Architecture-independent HF safetensors <-> megatron-core dist-checkpoint machinery.

An architecture supplies a `WeightMapping`: a list of `ParamRule`s, each tying one megatron
parameter (per layer) to one or more HF tensors with a `kind` that says how to merge/split and how
to shard over tensor parallelism. HF tensors are read lazily one rule at a time (safetensors mmap),
so memory never holds more than the tensors of one megatron parameter plus the model itself.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional

import torch
from safetensors.torch import save_file

from tide_megatron.atomic import publish
from tide_megatron.models.safetensors_reader import INDEX_NAME, SafetensorsReader

# How a rule's tensors combine and shard over TP (megatron layouts):
#   replicated : same tensor on every TP rank (norms)
#   column     : split on dim 0 (ColumnParallelLinear weight, vocab-parallel embedding)
#   row        : split on dim 1 (RowParallelLinear weight)
#   qkv        : HF q,k,v -> megatron fused [per query group: q heads, k, v] rows, split on dim 0
#   gate_up    : HF gate,up -> megatron fc1 [gate ; up], each half split on dim 0 separately
KINDS = ("replicated", "column", "row", "qkv", "gate_up")


@dataclass(frozen=True)
class ParamRule:
    """One megatron parameter <-> its HF tensors.

    Placeholders: `{i}` is the layer index and `{e}` the expert index; megatron names carry the local
    (per pipeline stage / expert-parallel rank) index, HF names the global one.
    """

    mcore: str
    hf: tuple[str, ...]
    kind: str = "replicated"

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"ParamRule {self.mcore}: kind must be one of {KINDS}, got {self.kind!r}")


@dataclass
class WeightMapping:
    """Per-architecture rules plus the head geometry the fused-QKV layout needs."""

    rules: list[ParamRule]
    num_heads: int
    num_query_groups: int
    head_dim: int
    tied_embeddings: bool = False
    _by_pattern: list[tuple[re.Pattern, ParamRule]] = field(default_factory=list, repr=False)

    def __post_init__(self):
        for rule in self.rules:
            pattern = re.escape(rule.mcore)
            for key in ("i", "e"):
                pattern = pattern.replace(re.escape("{" + key + "}"), rf"(?P<{key}>\d+)")
            self._by_pattern.append((re.compile(f"^{pattern}$"), rule))

    def rule_for(self, mcore_name: str) -> tuple[ParamRule, dict[str, int]]:
        """The rule matching a megatron parameter name and its local indices ({"i": layer, "e": expert})."""
        for pattern, rule in self._by_pattern:
            m = pattern.match(mcore_name)
            if m:
                return rule, {k: int(v) for k, v in m.groupdict().items()}
        raise ValueError(f"no conversion rule for megatron parameter {mcore_name!r}")

    def hf_names(self, rule: ParamRule, index: dict[str, int]) -> list[str]:
        return [n.format(**index) for n in rule.hf]

    # ---- HF -> megatron ----------------------------------------------------------------------
    def merge(self, rule: ParamRule, hf: list[torch.Tensor]) -> torch.Tensor:
        """HF tensors -> the full (unsharded) megatron tensor."""
        if rule.kind == "qkv":
            q, k, v = hf
            per = self.num_heads // self.num_query_groups
            tail = q.shape[1:]
            q = q.reshape(self.num_query_groups, per * self.head_dim, *tail)
            k = k.reshape(self.num_query_groups, self.head_dim, *tail)
            v = v.reshape(self.num_query_groups, self.head_dim, *tail)
            return torch.cat([q, k, v], dim=1).reshape(-1, *tail)
        if rule.kind == "gate_up":
            return torch.cat(hf, dim=0)
        (only,) = hf
        return only

    def shard(self, rule: ParamRule, full: torch.Tensor, tp_rank: int, tp_size: int) -> torch.Tensor:
        """The TP-rank slice of a full megatron tensor (query groups are contiguous in the qkv layout)."""
        if tp_size == 1 or rule.kind == "replicated":
            return full
        if rule.kind in ("column", "qkv"):
            return full.chunk(tp_size, dim=0)[tp_rank]
        if rule.kind == "row":
            return full.chunk(tp_size, dim=1)[tp_rank]
        gate, up = full.chunk(2, dim=0)
        return torch.cat([gate.chunk(tp_size, dim=0)[tp_rank], up.chunk(tp_size, dim=0)[tp_rank]], dim=0)

    # ---- megatron -> HF ----------------------------------------------------------------------
    def split(self, rule: ParamRule, full: torch.Tensor) -> list[torch.Tensor]:
        """The full megatron tensor -> its HF tensors (inverse of `merge`)."""
        if rule.kind == "qkv":
            per = self.num_heads // self.num_query_groups
            tail = full.shape[1:]
            grouped = full.reshape(self.num_query_groups, (per + 2) * self.head_dim, *tail)
            q, k, v = grouped.split([per * self.head_dim, self.head_dim, self.head_dim], dim=1)
            return [t.reshape(-1, *tail).contiguous() for t in (q, k, v)]
        if rule.kind == "gate_up":
            return [t.contiguous() for t in full.chunk(2, dim=0)]
        return [full.contiguous()]


def load_hf_into_model(model: torch.nn.Module, reader: SafetensorsReader, mapping: WeightMapping,
                       tp_rank: int, tp_size: int, layer_offset: int = 0, expert_offset: int = 0) -> None:
    """Copy HF tensors into this rank's megatron parameters, one parameter at a time.

    `layer_offset` / `expert_offset` turn this rank's local layer / expert indices into global ones.
    """
    offsets = {"i": layer_offset, "e": expert_offset}
    with torch.no_grad():
        for name, param in model.named_parameters():
            rule, local = mapping.rule_for(name)
            index = {k: v + offsets[k] for k, v in local.items()}
            full = mapping.merge(rule, [reader.get(k, name) for k in mapping.hf_names(rule, index)])
            local = mapping.shard(rule, full, tp_rank, tp_size)
            if local.shape != param.shape:
                raise ValueError(f"{reader.hf_dir}: {mapping.hf_names(rule, index)} give shape "
                                 f"{tuple(local.shape)} for {name}, expected {tuple(param.shape)}")
            param.copy_(local.to(param.dtype))


def iter_hf_tensors(model: torch.nn.Module, mapping: WeightMapping) -> Iterator[tuple[str, torch.Tensor]]:
    """(HF name, tensor) pairs of an unsharded (TP=1, PP=1) megatron model."""
    for name, param in model.named_parameters():
        rule, index = mapping.rule_for(name)
        for hf_name, tensor in zip(mapping.hf_names(rule, index), mapping.split(rule, param.detach())):
            yield hf_name, tensor.to("cpu", copy=True)


def write_hf_safetensors(out_dir: str, tensors: Iterator[tuple[str, torch.Tensor]],
                         max_shard_bytes: int = 2 * 1024**3, dtype: Optional[torch.dtype] = None) -> None:
    """Write shards of at most `max_shard_bytes` plus `model.safetensors.index.json` (HF's layout)."""
    shards: list[dict[str, torch.Tensor]] = [{}]
    size, total = 0, 0
    weight_map: dict[str, str] = {}
    files: list[str] = []

    def flush() -> None:
        if shards[-1]:
            files.append(f"model-{len(files) + 1:05d}.safetensors")
            for key in shards[-1]:
                weight_map[key] = files[-1]
            save_file(shards[-1], os.path.join(out_dir, files[-1]), metadata={"format": "pt"})
            shards[-1] = {}

    for name, tensor in tensors:
        tensor = tensor.to(dtype) if dtype is not None else tensor
        nbytes = tensor.numel() * tensor.element_size()
        if size and size + nbytes > max_shard_bytes:
            flush()
            size = 0
        shards[-1][name] = tensor.contiguous()
        size += nbytes
        total += nbytes
    flush()
    n = len(files)
    renamed = {}
    for i, f in enumerate(files):
        final = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
        os.replace(os.path.join(out_dir, f), os.path.join(out_dir, final))
        renamed[f] = final
    index = {"metadata": {"total_size": total}, "weight_map": {k: renamed[v] for k, v in weight_map.items()}}
    with open(os.path.join(out_dir, INDEX_NAME), "w", encoding="utf-8") as fh:
        json.dump(index, fh, indent=2, sort_keys=True)


def check_output_dir(out_dir: str, flag: str) -> None:
    """Refuse to overwrite: the output must not exist yet (its parent must)."""
    if os.path.exists(out_dir):
        raise FileExistsError(f"{flag} {out_dir}: already exists; choose a new directory")
    parent = os.path.dirname(os.path.abspath(out_dir))
    if not os.path.isdir(parent):
        raise FileNotFoundError(f"{flag} {out_dir}: parent directory {parent} does not exist")


@contextmanager
def atomic_output_dir(out_dir: str, flag: str = "--out", is_writer: bool = True,
                      barrier: Callable[[], None] = lambda: None) -> Iterator[str]:
    """Yield a temp sibling directory that becomes `out_dir` by rename only on success (no partial output).

    Multi-rank: every rank calls it; rank `is_writer` creates/renames/cleans, `barrier` syncs the ranks.
    The temp name is derived from `out_dir` so all ranks agree on it.
    """
    out_dir = os.path.abspath(out_dir)
    check_output_dir(out_dir, flag)
    tmp = f"{out_dir}.tmp-partial"
    if is_writer:
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
    barrier()
    try:
        yield tmp
        barrier()
        if is_writer:
            publish(tmp, out_dir)
        barrier()
    except BaseException:
        if is_writer:
            shutil.rmtree(tmp, ignore_errors=True)
        raise


def copy_hf_assets(src_dir: str, dst_dir: str, skip: tuple[str, ...] = (".safetensors", ".bin", ".pt",
                                                                        ".distcp", INDEX_NAME)) -> None:
    """Copy the small non-weight files (config, tokenizer, generation config) of a model directory."""
    os.makedirs(dst_dir, exist_ok=True)
    for name in sorted(os.listdir(src_dir)):
        path = os.path.join(src_dir, name)
        if os.path.isfile(path) and not name.endswith(skip) and name != INDEX_NAME:
            shutil.copy2(path, os.path.join(dst_dir, name))

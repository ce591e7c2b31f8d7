"""One two-way weight mapping per architecture: megatron-core parameter names <-> Hugging Face tensor names.

A `WeightMapping` is a list of `ParamRule`s. Each ties one megatron tensor (a parameter or a persistent
buffer such as the router's expert bias) to one or more HF tensors, with a `kind` that says how they
combine and how the result is split over tensor parallelism:

  replicated  the same tensor on every rank (norms, router weight, expert bias)
  column      split on dim 0 (ColumnParallelLinear weight, vocab-parallel embedding / output layer)
  row         split on dim 1 (RowParallelLinear weight)
  qkv         HF q, k, v (three tensors, or one tensor stacked [q heads; k heads; v heads]) -> megatron's
              fused rows [per query group: q heads, k, v]; a TP shard is a run of whole query groups
  gate_up     HF gate, up -> megatron's fc1 [gate ; up]; each half is split over TP on its own

Names carry placeholders: `{i}` is the layer and `{e}` the expert. In megatron names they are the local
indices (layer within this pipeline stage, expert within this expert-parallel rank); in HF names the global
ones. A rule with `{e}` is an expert rule: it is split over the expert tensor-parallel group, the others
over the tensor-parallel group. HF -> megatron reads only this rank's slice of each HF tensor
(`read_shard`); megatron -> HF (`split`) works on an unsharded model.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
import torch

from tide_megatron.models.safetensors_reader import SafetensorsReader

KINDS = ("replicated", "column", "row", "qkv", "gate_up")


@dataclass(frozen=True)
class ParamRule:
    """One megatron tensor <-> its HF tensors (see the module docstring for kinds and placeholders)."""

    mcore: str
    hf: tuple[str, ...]
    kind: str = "replicated"

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"ParamRule {self.mcore}: kind must be one of {KINDS}, got {self.kind!r}")
        counts = {"qkv": (1, 3), "gate_up": (2,)}.get(self.kind, (1,))
        if len(self.hf) not in counts:
            raise ValueError(f"ParamRule {self.mcore}: kind {self.kind!r} takes {' or '.join(map(str, counts))} "
                             f"HF tensors, got {len(self.hf)}")

    @property
    def is_expert(self) -> bool:
        """Expert weights: indexed through expert parallelism, split over the expert tensor-parallel group."""
        return "{e}" in self.mcore


def _part(n: int, size: int, rank: int) -> slice:
    return slice(rank * n // size, (rank + 1) * n // size)


@dataclass
class WeightMapping:
    """An architecture's rules, the attention geometry the fused-QKV layout needs, and the HF tensors that
    may be present without a megatron home (`skippable` regexes, e.g. a tied checkpoint's `lm_head.weight`)."""

    rules: list[ParamRule]
    num_heads: int
    num_query_groups: int
    head_dim: int
    skippable: tuple[str, ...] = ()
    _patterns: list[tuple[re.Pattern, ParamRule]] = field(default_factory=list, repr=False)

    def __post_init__(self):
        if self.num_heads % self.num_query_groups:
            raise ValueError(f"num_heads={self.num_heads} is not a multiple of num_query_groups="
                             f"{self.num_query_groups}")
        for rule in self.rules:
            pattern = re.escape(rule.mcore)
            for key in ("i", "e"):
                pattern = pattern.replace(re.escape("{" + key + "}"), rf"(?P<{key}>\d+)")
            self._patterns.append((re.compile(f"^{pattern}$"), rule))

    def rule_for(self, mcore_name: str) -> tuple[ParamRule, dict[str, int]]:
        """The rule matching a megatron tensor name, and its local indices ({"i": layer, "e": expert})."""
        for pattern, rule in self._patterns:
            m = pattern.match(mcore_name)
            if m:
                return rule, {k: int(v) for k, v in m.groupdict().items()}
        raise ValueError(f"no conversion rule for megatron tensor {mcore_name!r}")

    def may_skip(self, hf_name: str) -> bool:
        """True for an HF tensor the model does not need (see `skippable`)."""
        return any(re.fullmatch(p, hf_name) for p in self.skippable)

    @staticmethod
    def hf_names(rule: ParamRule, index: dict[str, int]) -> list[str]:
        """The HF tensor names of `rule` at global indices `index`."""
        return [name.format(**index) for name in rule.hf]

    # ---- HF -> megatron: this rank's slice, read straight from the shards ------------------------------
    def read_shard(self, rule: ParamRule, names: list[str], reader: SafetensorsReader, shape: tuple[int, ...],
                   rank: int, size: int, purpose: str) -> torch.Tensor:
        """Read the slice of rank `rank` of `size` for a megatron tensor of local `shape` (full HF shapes checked)."""
        if rule.kind == "replicated":
            return reader.read(names[0], purpose, expect_shape=shape)
        if rule.kind == "column":
            full = (shape[0] * size, *shape[1:])
            return reader.read(names[0], purpose, rows=_part(full[0], size, rank), expect_shape=full)
        if rule.kind == "row":
            full = (shape[0], shape[1] * size)
            return reader.read(names[0], purpose, cols=_part(full[1], size, rank), expect_shape=full)
        if rule.kind == "gate_up":
            half = (shape[0] // 2 * size, *shape[1:])
            return torch.cat([reader.read(n, purpose, rows=_part(half[0], size, rank), expect_shape=half)
                              for n in names], dim=0)
        return self._read_qkv(names, reader, shape[1:], rank, size, purpose)

    def _read_qkv(self, names: list[str], reader: SafetensorsReader, tail: tuple[int, ...], rank: int, size: int,
                  purpose: str) -> torch.Tensor:
        """Query groups [g0, g1) of this rank: HF q/k/v rows regrouped as megatron's [q_g; k_g; v_g] rows."""
        hd, nh, ng = self.head_dim, self.num_heads, self.num_query_groups
        if ng % size:
            raise ValueError(f"tensor-parallel size {size} does not divide the {ng} query groups ({purpose})")
        per = nh // ng
        g0, g1 = rank * ng // size, (rank + 1) * ng // size
        q_rows, kv_rows = slice(g0 * per * hd, g1 * per * hd), slice(g0 * hd, g1 * hd)
        if len(names) == 3:
            q = reader.read(names[0], purpose, rows=q_rows, expect_shape=(nh * hd, *tail))
            k = reader.read(names[1], purpose, rows=kv_rows, expect_shape=(ng * hd, *tail))
            v = reader.read(names[2], purpose, rows=kv_rows, expect_shape=(ng * hd, *tail))
        else:
            stacked = ((nh + 2 * ng) * hd, *tail)
            q = reader.read(names[0], purpose, rows=q_rows, expect_shape=stacked)
            k = reader.read(names[0], purpose, rows=_shift(kv_rows, nh * hd), expect_shape=stacked)
            v = reader.read(names[0], purpose, rows=_shift(kv_rows, (nh + ng) * hd), expect_shape=stacked)
        groups = g1 - g0
        return torch.cat([q.reshape(groups, per * hd, *tail), k.reshape(groups, hd, *tail),
                          v.reshape(groups, hd, *tail)], dim=1).reshape(-1, *tail)

    # ---- megatron -> HF: an unsharded tensor into its HF tensors ----------------------------------------
    def split(self, rule: ParamRule, full: torch.Tensor) -> list[torch.Tensor]:
        """The full megatron tensor -> its HF tensors, in the order of `rule.hf` (inverse of `read_shard`)."""
        if rule.kind == "qkv":
            hd, nh, ng = self.head_dim, self.num_heads, self.num_query_groups
            per, tail = nh // ng, full.shape[1:]
            grouped = full.reshape(ng, (per + 2) * hd, *tail)
            q, k, v = (t.reshape(-1, *tail) for t in grouped.split([per * hd, hd, hd], dim=1))
            parts = [q, k, v] if len(rule.hf) == 3 else [torch.cat([q, k, v], dim=0)]
            return [t.contiguous() for t in parts]
        if rule.kind == "gate_up":
            return [t.contiguous() for t in full.chunk(2, dim=0)]
        return [full.contiguous()]


def _shift(rows: slice, offset: int) -> slice:
    return slice(rows.start + offset, rows.stop + offset)


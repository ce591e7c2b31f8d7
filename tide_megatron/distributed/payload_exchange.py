"""Payload exchange inside one teacher model-parallel group (DESIGN §2).

Ranks of one teacher tensor/pipeline-parallel group must feed the teacher identical inputs, but each
holds a different student micro-batch. So: gather the teacher inputs of every rank in the group
(padded to a common length), run the teacher once on the concatenation, and hand each rank back only
the rows of its own sequences. Payloads that are still vocab-parallel (logit rows ``[n, V/tp]``) are
returned as full-vocabulary rows of the rank's own positions with one all-to-all
(`vocab_shards_to_own_rows`), so no rank ever holds the full-vocabulary rows of another rank's batch.

With a group of size 1 (a teacher with TP = PP = 1, e.g. the EP-only MoE teacher, whose expert
all-to-all already handles different tokens per rank) every function is the identity.

A teacher on ranks of its own (``teacher.placement=separate``) already holds the inputs of every student rank
it serves: `concat_teacher_inputs` and `concat_rows` put them together exactly as the gathers would.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist

from tide_megatron.distributed.device import collective_device


@dataclass
class GatherInfo:
    """Where each rank's sequences sit in the gathered teacher batch."""

    batch_sizes: list[int]  # sequences per rank of the group, in group-rank order
    lengths: list[int]  # each rank's own padded teacher length before gathering
    group_rank: int

    @property
    def offset(self) -> int:
        return sum(self.batch_sizes[: self.group_rank])

    @property
    def own_batch(self) -> int:
        return self.batch_sizes[self.group_rank]

    @property
    def own_length(self) -> int:
        return self.lengths[self.group_rank]


def _group_size(group: Optional[dist.ProcessGroup]) -> int:
    return 1 if group is None or not dist.is_initialized() else dist.get_world_size(group)


def _all_gather_ints(values: list[int], group: dist.ProcessGroup) -> list[list[int]]:
    t = torch.tensor(values, dtype=torch.int64, device=collective_device(group))
    out = [torch.empty_like(t) for _ in range(dist.get_world_size(group))]
    dist.all_gather(out, t, group=group)
    return [o.tolist() for o in out]


def gather_teacher_inputs(tensors: dict[str, torch.Tensor], pad_values: dict[str, int | float | bool],
                          group: Optional[dist.ProcessGroup]) -> tuple[dict[str, torch.Tensor], GatherInfo]:
    """Concatenate ``[b_r, L_r, ...]`` tensors of all group ranks along the batch, right-padding dim 1.

    Every tensor in ``tensors`` shares ``b`` and ``L`` on this rank; ``pad_values[name]`` fills the
    padding (e.g. the teacher pad id for ids, False for attention). Collective over ``group``.
    """
    first = next(iter(tensors.values()))
    b, L = int(first.shape[0]), int(first.shape[1])
    size = _group_size(group)
    if size == 1:
        return dict(tensors), GatherInfo([b], [L], 0)
    shapes = _all_gather_ints([b, L], group)
    batch_sizes, lengths = [s[0] for s in shapes], [s[1] for s in shapes]
    max_b, max_L = max(batch_sizes), max(lengths)
    out: dict[str, torch.Tensor] = {}
    for name, x in tensors.items():
        if x.shape[0] != b or x.shape[1] != L:
            raise ValueError(f"gather_teacher_inputs: {name} has shape {tuple(x.shape)}, expected [{b}, {L}, ...]")
        padded = x.new_full((max_b, max_L, *x.shape[2:]), pad_values[name])
        padded[:b, :L] = x
        bufs = [torch.empty_like(padded) for _ in range(size)]
        dist.all_gather(bufs, padded.contiguous(), group=group)
        out[name] = torch.cat([buf[:bs] for buf, bs in zip(bufs, batch_sizes)], dim=0)
    return out, GatherInfo(batch_sizes, lengths, dist.get_rank(group))


def concat_teacher_inputs(ranks: list[dict[str, torch.Tensor]], pad_values: dict[str, int | float | bool]
                          ) -> tuple[dict[str, torch.Tensor], list[GatherInfo]]:
    """`gather_teacher_inputs` for inputs already at hand: the ``[b_r, L_r, ...]`` tensors of several ranks
    concatenated along the batch, each right-padded to the longest L; one `GatherInfo` per rank."""
    sizes = [(int(next(iter(t.values())).shape[0]), int(next(iter(t.values())).shape[1])) for t in ranks]
    max_L = max(L for _, L in sizes)
    out = {}
    for name in ranks[0]:
        parts = []
        for k, tensors in enumerate(ranks):
            x = tensors[name]
            if tuple(x.shape[:2]) != sizes[k]:
                raise ValueError(f"concat_teacher_inputs: {name} of rank {k} has shape {tuple(x.shape)}, "
                                 f"expected {list(sizes[k])} + [...]")
            padded = x.new_full((x.shape[0], max_L, *x.shape[2:]), pad_values[name])
            padded[:, : x.shape[1]] = x
            parts.append(padded)
        out[name] = torch.cat(parts, dim=0)
    batch_sizes, lengths = [b for b, _ in sizes], [L for _, L in sizes]
    return out, [GatherInfo(batch_sizes, lengths, k) for k in range(len(ranks))]


def concat_rows(rows: list[torch.Tensor], infos: list[GatherInfo]) -> tuple[torch.Tensor, list[int]]:
    """`gather_rows` for rows already at hand: each rank's ``[n_r, 2]`` rows re-indexed into the concatenated
    batch, and each rank's count."""
    shifted = []
    for part, info in zip(rows, infos):
        part = part.clone()
        part[:, 0] += info.offset
        shifted.append(part)
    return torch.cat(shifted, 0), [int(r.shape[0]) for r in rows]


def own_sequences(payload: torch.Tensor, info: GatherInfo) -> torch.Tensor:
    """This rank's sequences ``[b_own, L_own, ...]`` of a per-sequence payload of the gathered batch.

    For payloads already reduced over the teacher's TP group (token log-probs ``[B, L_max]``).
    """
    return payload[info.offset: info.offset + info.own_batch, : info.own_length]


def row_counts(rows_per_rank: int, group: Optional[dist.ProcessGroup]) -> list[int]:
    """How many payload rows each rank of the group asked for (collective)."""
    if _group_size(group) == 1:
        return [rows_per_rank]
    return [c[0] for c in _all_gather_ints([rows_per_rank], group)]


def own_rows(rows: torch.Tensor, counts: list[int], group: Optional[dist.ProcessGroup]) -> torch.Tensor:
    """This rank's rows of a full-vocabulary row payload ``[sum(counts), V]`` replicated on the group."""
    if _group_size(group) == 1:
        return rows
    r = dist.get_rank(group)
    start = sum(counts[:r])
    return rows[start: start + counts[r]]


def vocab_shards_to_own_rows(local_shard: Optional[torch.Tensor], counts: list[int],
                             group: Optional[dist.ProcessGroup], tp_rank: Optional[int] = None) -> torch.Tensor:
    """Vocab-parallel rows → full-vocabulary rows ``[counts[me], tp * V/tp]`` of this rank's own positions, with one
    all-to-all over ``group``: no rank receives another rank's rows.

    ``local_shard`` is ``[sum(counts), V/tp]``: this rank's vocabulary slice (slice number ``tp_rank``, default
    its rank in ``group``) of every rank's rows, in group-rank order; None on a rank that holds no slice (a
    teacher pipeline stage before the last). With ``group`` the teacher's TP group every rank holds a slice;
    with its TP x PP model-parallel group, the last stage's TP ranks send and every rank receives.
    """
    size = _group_size(group)
    if size == 1:
        if local_shard is None:
            raise ValueError("vocab_shards_to_own_rows: a group of one rank must hold the vocabulary rows")
        return local_shard
    me = dist.get_rank(group)
    width = 0 if local_shard is None else int(local_shard.shape[1])
    if local_shard is not None and local_shard.shape[0] != sum(counts):
        raise ValueError(f"vocab_shards_to_own_rows: {local_shard.shape[0]} rows but the group asked for {sum(counts)}")
    layout = _all_gather_ints([int(local_shard is not None), me if tp_rank is None else tp_rank, width], group)
    sources = [r for r in range(size) if layout[r][0]]  # group ranks holding a slice
    widths = {layout[r][2] for r in sources}
    if not sources or len(widths) != 1:
        raise ValueError(f"vocab_shards_to_own_rows: the group holds vocabulary slices of widths {sorted(widths)}")
    width = widths.pop()
    dtype = torch.float32 if local_shard is None else local_shard.dtype
    send = (local_shard.contiguous() if local_shard is not None else
            torch.empty((0, width), dtype=dtype, device=collective_device(group)))
    recv = send.new_empty((len(sources) * counts[me], width))
    dist.all_to_all_single(recv, send, output_split_sizes=[counts[me] if layout[r][0] else 0 for r in range(size)],
                           input_split_sizes=counts if local_shard is not None else [0] * size, group=group)
    # recv holds my rows' slice from each source, stacked by group rank: [n_src, n_me, V/tp] -> slices in tp order.
    order = sorted(range(len(sources)), key=lambda i: layout[sources[i]][1])
    parts = recv.view(len(sources), counts[me], width)[order]
    return parts.permute(1, 0, 2).reshape(counts[me], len(sources) * width)


def gather_rows(rows: torch.Tensor, info: GatherInfo, group: Optional[dist.ProcessGroup]) -> tuple[torch.Tensor, list[int]]:
    """Requested ``(sequence, position)`` rows ``[n_r, 2]`` of every rank, re-indexed into the gathered batch.

    Returns the concatenated rows and each rank's count (for `own_rows`). Collective over ``group``.
    """
    counts = row_counts(int(rows.shape[0]), group)
    if _group_size(group) == 1:
        return rows, counts
    size = len(counts)
    padded = rows.new_zeros((max(max(counts), 1), 2))
    padded[: rows.shape[0]] = rows
    bufs = [torch.empty_like(padded) for _ in range(size)]
    dist.all_gather(bufs, padded, group=group)
    offsets = [sum(info.batch_sizes[:r]) for r in range(size)]
    out = []
    for r in range(size):
        part = bufs[r][: counts[r]].clone()
        part[:, 0] += offsets[r]
        out.append(part)
    return torch.cat(out, 0), counts

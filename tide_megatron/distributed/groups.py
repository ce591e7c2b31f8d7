"""One process group per distinct rank set, shared by every grid that asks for it, destroyed with its last user.

Every gloo group costs three threads per member rank and every NCCL communicator costs device buffers, so
grids never create groups directly: `acquire` hands out the cached group of a rank set (the world group
for the whole world) and counts its users; `release` destroys the group once nobody holds it. Building
the same layout twice therefore creates nothing new, and closing every grid leaves no group behind.

Both calls are collective in the sense of ``torch.distributed.new_group``: every rank of the world makes
the same calls with the same rank lists in the same order, so every rank keeps the same reference counts.

A ``channel`` names a traffic stream that must not share a communicator with the grids' collectives (the
point-to-point teacher payloads of ``teacher.placement=separate``): its groups are keyed by (channel, ranks)
and never replaced by the world group.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Iterable, Optional, Sequence

import torch.distributed as dist

RankSet = tuple[int, ...]
Key = tuple[str, RankSet]

#: (channel, rank set) -> [group (GroupMember.NON_GROUP_MEMBER on ranks outside it), number of holders]
_GROUPS: dict[Key, list] = {}


def _key(ranks: Iterable[int], channel: str = "") -> Key:
    return channel, tuple(sorted(int(r) for r in ranks))


def _is_world(key: Key) -> bool:
    return not key[0] and key[1] == tuple(range(dist.get_world_size()))


def acquire(rank_lists: Sequence[Sequence[int]], timeout: Optional[timedelta] = None,
            channel: str = "") -> Optional[dist.ProcessGroup]:
    """This rank's group among ``rank_lists`` (disjoint lists covering the ranks that use them), creating any
    rank set not held yet (per ``channel``). Returns None when this rank is in none of the lists. Collective
    over the world."""
    mine = None
    rank = dist.get_rank()
    for ranks in rank_lists:
        key = _key(ranks, channel)
        entry = _GROUPS.get(key)
        if entry is None:
            if _is_world(key):
                group = dist.group.WORLD
            else:
                members = list(key[1])
                group = dist.new_group(members, timeout=timeout) if timeout is not None else dist.new_group(members)
            entry = _GROUPS[key] = [group, 0]
        entry[1] += 1
        if rank in key[1]:
            mine = entry[0]
    return mine


def release(rank_lists: Sequence[Sequence[int]], channel: str = "") -> None:
    """Drop one hold on each rank set; a set nobody holds any more is destroyed (the world group never is)."""
    for ranks in rank_lists:
        key = _key(ranks, channel)
        entry = _GROUPS.get(key)
        if entry is None:
            raise RuntimeError(f"process group over ranks {list(key[1])} released more often than acquired")
        entry[1] -= 1
        if entry[1] == 0:
            del _GROUPS[key]
            group = entry[0]
            if not _is_world(key) and group not in (None, dist.GroupMember.NON_GROUP_MEMBER):
                dist.destroy_process_group(group)


def live_rank_sets() -> dict[Key, int]:
    """The (channel, rank set) pairs with a live group and how many holders each has (tests, diagnostics)."""
    return {key: entry[1] for key, entry in _GROUPS.items()}


def held_groups() -> list[dist.ProcessGroup]:
    """The live groups of this rank that the registry owns."""
    return [entry[0] for entry in _GROUPS.values() if isinstance(entry[0], dist.ProcessGroup)]


def forget_all() -> None:
    """Drop every cached group without destroying it: the default process group is being torn down."""
    _GROUPS.clear()

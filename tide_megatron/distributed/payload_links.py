"""Teacher payloads sent point to point from a separate teacher pool to the student ranks (DESIGN §2).

With ``teacher.placement=separate`` the student grid spans ranks ``[0, S)`` and the teacher grid ``[S, S + T)``.
`PayloadRoutes` (pure, the same on every rank) says who serves whom: the student's data-parallel rank j is served
by teacher replica ``j % D`` (D = T / (tp x pp)), and the student ranks a replica serves are dealt round-robin
to the replica's ranks, each of which holds the whole payload (reduced over the teacher's TP group, broadcast
from its last pipeline stage).

`PayloadChannel` carries one stream of payloads: each payload follows a header of five int64s (kind, epoch,
first sample index, rows, cols) that the student checks against its own batch, and a stream ends with an end
header sent when the teacher closes. Each stream (training, held-out evaluation) has a process group of its own
(`groups.acquire(channel=...)`), so streams never interleave on one communicator: NCCL matches point-to-point
messages by issue order, and the teacher runs a step ahead on the training stream.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist

from tide_megatron.distributed import groups

PAYLOAD, END = 1, 0
HEADER_LEN = 5


@dataclass(frozen=True)
class PayloadRoutes:
    """Which teacher rank sends each student rank its payloads (ranks as `HyperCommGrid` numbers them: tp fastest,
    then dp, then pp)."""

    student_ranks: int
    student_tp: int
    teacher_ranks: int
    teacher_tp: int
    teacher_pp: int

    def __post_init__(self) -> None:
        if self.student_ranks % self.student_tp or self.teacher_ranks % (self.teacher_tp * self.teacher_pp):
            raise ValueError(f"payload routes: {self.student_ranks} student ranks at tp={self.student_tp}, "
                             f"{self.teacher_ranks} teacher ranks at tp x pp = {self.teacher_tp} x {self.teacher_pp}")
        if self.student_dp % self.replicas:
            raise ValueError(f"payload routes: {self.replicas} teacher replicas do not divide the {self.student_dp} "
                             f"student data-parallel ranks")

    @property
    def student_dp(self) -> int:
        return self.student_ranks // self.student_tp

    @property
    def replicas(self) -> int:
        return self.teacher_ranks // (self.teacher_tp * self.teacher_pp)

    def is_teacher(self, rank: int) -> bool:
        return rank >= self.student_ranks

    def student_rank(self, dp_rank: int, tp_rank: int = 0) -> int:
        return dp_rank * self.student_tp + tp_rank

    def replica_of(self, teacher_rank: int) -> int:
        """The teacher data-parallel index (replica) of a teacher-pool rank."""
        return ((teacher_rank - self.student_ranks) // self.teacher_tp) % self.replicas

    def replica_ranks(self, replica: int) -> list[int]:
        """The teacher model-parallel group (tp x pp ranks) of one replica."""
        base, tp, D = self.student_ranks, self.teacher_tp, self.replicas
        return sorted(base + t + tp * (replica + D * p) for p in range(self.teacher_pp) for t in range(tp))

    def served_dp_ranks(self, replica: int) -> list[int]:
        """The student data-parallel ranks one replica serves, in the order their passes are concatenated."""
        return [j for j in range(self.student_dp) if j % self.replicas == replica]

    def _served_student_ranks(self, replica: int) -> list[int]:
        return [self.student_rank(j, t) for j in self.served_dp_ranks(replica) for t in range(self.student_tp)]

    def source(self, student_rank: int) -> int:
        """The teacher rank that sends ``student_rank`` its payloads."""
        replica = (student_rank // self.student_tp) % self.replicas
        served = self._served_student_ranks(replica)
        senders = self.replica_ranks(replica)
        return senders[served.index(student_rank) % len(senders)]

    def destinations(self, teacher_rank: int) -> dict[int, list[int]]:
        """Student data-parallel rank → the student ranks of it that ``teacher_rank`` sends payloads to."""
        replica = self.replica_of(teacher_rank)
        out: dict[int, list[int]] = {}
        for j in self.served_dp_ranks(replica):
            out[j] = [s for s in (self.student_rank(j, t) for t in range(self.student_tp))
                      if self.source(s) == teacher_rank]
        return out


@dataclass
class Header:
    kind: int
    epoch: int
    first_index: int
    rows: int
    cols: int


class PayloadChannel:
    """One stream of fp32 payloads between the teacher pool and the student ranks, on its own process group.

    Opening and closing are collective over the world (they acquire and release the stream's group).
    """

    def __init__(self, name: str, device: Optional[torch.device] = None):
        self.name = name
        self.device = device or torch.device("cpu")
        self._ranks = [list(range(dist.get_world_size()))]
        self.group = groups.acquire(self._ranks, channel=name)
        self._pending: list[tuple[dist.Work, torch.Tensor]] = []

    def send(self, payload: torch.Tensor, dst: int, epoch: int, first_index: int) -> None:
        """Queue one payload (fp32 ``[rows, cols]``) for ``dst``; it stays alive until `wait` or `close`."""
        if payload.dim() != 2:
            raise ValueError(f"{self.name}: a payload must be 2-D [rows, cols], got {tuple(payload.shape)}")
        header = torch.tensor([PAYLOAD, epoch, first_index, *payload.shape], dtype=torch.int64, device=self.device)
        body = payload.to(device=self.device, dtype=torch.float32).contiguous()
        for tensor in (header, body) if body.numel() else (header,):  # an empty payload is its header alone
            self._pending.append((dist.isend(tensor, dst, group=self.group), tensor))

    def send_end(self, dst: int) -> None:
        header = torch.tensor([END, 0, 0, 0, 0], dtype=torch.int64, device=self.device)
        self._pending.append((dist.isend(header, dst, group=self.group), header))

    def wait(self, keep: int = 0) -> None:
        """Wait for all queued sends but the newest ``keep`` (the receivers take them in order)."""
        done, self._pending = self._pending[: len(self._pending) - keep], self._pending[len(self._pending) - keep:]
        for work, _ in done:
            work.wait()

    @property
    def queued(self) -> int:
        return len(self._pending)

    def recv(self, src: int) -> tuple[Header, Optional[torch.Tensor]]:
        """The next message from ``src``: a header and its payload, or an end header and None."""
        raw = torch.empty(HEADER_LEN, dtype=torch.int64, device=self.device)
        dist.irecv(raw, src, group=self.group).wait()
        header = Header(*(int(v) for v in raw.tolist()))
        if header.kind == END:
            return header, None
        if header.kind != PAYLOAD:
            raise RuntimeError(f"{self.name}: rank {src} sent an unknown message kind {header.kind}")
        body = torch.empty(header.rows, header.cols, dtype=torch.float32, device=self.device)
        if body.numel():
            dist.irecv(body, src, group=self.group).wait()
        return header, body

    def close(self) -> None:
        """Wait for every queued send, then release the stream's group (collective). Idempotent."""
        self.wait()
        if self._ranks:
            groups.release(self._ranks, channel=self.name)
            self._ranks = []

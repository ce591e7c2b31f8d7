"""Where a step's teacher payloads come from (``teacher.placement``; DESIGN §2, docs/PLACEMENT.md).

Every source answers ``payload(batch, stream)`` with what `passes.run_teacher_passes` returns on this rank for
``batch`` (``stream`` is "train" or "valid", the held-out evaluation):

- `ColocatedTeacher` (the default): the teacher on every rank beside the student, one engine call over the
  teacher model-parallel group.
- `PooledTeacher` (``separate``, student ranks): the payload sent by the teacher-pool rank that serves this rank
  (`distributed.payload_links`), checked against the batch (epoch, first sample, shape).
- `CachedTeacher` (``offline``): the payload read from a `teacher.cache.TeacherCache`.

`TeacherPool` is the teacher ranks' side of ``separate``: it builds the passes of every student rank its replica
serves (the same data pipeline, seed and sample order as those ranks, so only payloads travel), runs them in
one engine call and sends each student rank its payload. `close()` ends a source's streams; the groups
themselves belong to whoever opened the channels.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.distributed as dist

from tide_megatron.data.batch import DistillBatch
from tide_megatron.distributed.payload_links import PayloadChannel, PayloadRoutes
from tide_megatron.teacher.cache import TeacherCache
from tide_megatron.teacher.engine import TeacherEngine
from tide_megatron.teacher.passes import TeacherPasses, payload_shape, run_teacher_passes, serve_teacher_passes

PassBuilder = Callable[[DistillBatch], TeacherPasses]
STREAMS = ("train", "valid")


class PayloadMismatch(RuntimeError):
    """A payload from the teacher pool that is not for this rank's batch: the two sides' data disagree."""


class ColocatedTeacher:
    """The teacher beside the student on every rank: this rank's payload from one call over the teacher group."""

    def __init__(self, engine: TeacherEngine, group: Optional[dist.ProcessGroup], build_passes: PassBuilder):
        self.engine, self.group, self.build_passes = engine, group, build_passes
        self.tokens = 0  # teacher input positions this rank has sent since the caller last reset it

    def payload(self, batch: DistillBatch, stream: str = "train") -> torch.Tensor:
        passes = self.build_passes(batch)
        self.tokens += int(passes.inputs["ids"].numel())
        return run_teacher_passes(self.engine, passes, self.group)

    def close(self) -> None:
        pass


class PooledTeacher:
    """A student rank's payloads, received from the pool rank that serves it (``teacher.placement=separate``)."""

    def __init__(self, routes: PayloadRoutes, channels: dict[str, PayloadChannel], vocab_limit: Optional[int]):
        self.source = routes.source(dist.get_rank())
        self.channels = channels
        self.vocab_limit = vocab_limit

    def payload(self, batch: DistillBatch, stream: str = "train") -> torch.Tensor:
        header, payload = self.channels[stream].recv(self.source)
        want = payload_shape(batch, self.vocab_limit)
        first = int(batch.index[0])
        if payload is None or (header.epoch, header.first_index) != (batch.epoch, first) or \
                tuple(payload.shape) != tuple(want):
            got = "the end of the stream" if payload is None else (
                f"epoch {header.epoch}, first sample {header.first_index}, shape {list(payload.shape)}")
            raise PayloadMismatch(f"teacher.placement=separate: rank {dist.get_rank()} expected the {stream} payload "
                                  f"of epoch {batch.epoch}, first sample {first}, shape {list(want)}, but teacher rank "
                                  f"{self.source} sent {got}: the teacher pool and the student read different data "
                                  f"(same data.*, optim.seed and checkpoint on every rank?)")
        return payload

    def close(self) -> None:
        """Take every message the pool sent ahead (the step it prefetched before a stop) up to its end marker."""
        for channel in self.channels.values():
            while channel.recv(self.source)[1] is not None:
                pass


class CachedTeacher:
    """Payloads read from an offline cache (``teacher.placement=offline``): no teacher is built."""

    def __init__(self, cache: TeacherCache):
        self.cache = cache

    def payload(self, batch: DistillBatch, stream: str = "train") -> torch.Tensor:
        return self.cache.payload(stream, batch)

    def close(self) -> None:
        self.cache.close()


class TeacherPool:
    """A teacher-pool rank (``teacher.placement=separate``): serves one micro-batch position of every student
    rank its replica serves, in one engine call, and sends each student rank its payload."""

    def __init__(self, engine: TeacherEngine, routes: PayloadRoutes, channels: dict[str, PayloadChannel],
                 build_passes: PassBuilder):
        rank = dist.get_rank()
        self.engine, self.routes, self.channels, self.build_passes = engine, routes, channels, build_passes
        self.served = routes.served_dp_ranks(routes.replica_of(rank))
        self.destinations = routes.destinations(rank)

    def serve(self, bundle: list[DistillBatch], stream: str = "train") -> None:
        """``bundle[k]`` is the micro-batch of student data-parallel rank ``self.served[k]``."""
        if len(bundle) != len(self.served):
            raise ValueError(f"teacher pool: {len(bundle)} micro-batches for {len(self.served)} served student ranks")
        payloads = serve_teacher_passes(self.engine, [self.build_passes(b) for b in bundle])
        for dp_rank, batch, payload in zip(self.served, bundle, payloads):
            for dst in self.destinations[dp_rank]:
                self.channels[stream].send(payload, dst, batch.epoch, int(batch.index[0]))

    def close(self) -> None:
        """End every stream to every student rank this rank serves, and wait until all is received."""
        for channel in self.channels.values():
            for students in self.destinations.values():
                for dst in students:
                    channel.send_end(dst)
            channel.wait()

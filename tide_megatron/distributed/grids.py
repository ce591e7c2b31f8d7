"""Teacher and student process-group layouts as megatron-core `HyperCommGrid`s.

Both grids span the same ranks by default (co-located): the teacher grid has dims tp/cp/dp/pp for its
dense part and etp/ep/edp/pp for its experts (megatron-core's "tp-cp-ep-dp-pp" order); the student grid
is data-parallel (optionally tensor-parallel). Each is exposed as a `ProcessGroupCollection`, so the two
models are built side by side in one process, each with its own groups. With ``teacher.placement=separate``
the teacher grid takes the last ``teacher_ranks`` ranks (`HyperCommGrid`'s ``rank_offset``) and the student
grid the ranks before them; on a rank outside a grid its groups are None.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Optional

import torch.distributed as dist
from megatron.core.hyper_comm_grid import HyperCommGrid
from megatron.core.process_groups_config import ProcessGroupCollection

from tide_megatron.distributed import groups


@dataclass(frozen=True)
class ParallelLayout:
    """Sizes of one model's parallel dimensions; data parallel is whatever is left of the world."""

    tp: int = 1
    pp: int = 1
    ep: int = 1
    etp: int = 1

    def data_parallel_size(self, world_size: int, name: str = "layout") -> int:
        """World size divided by the model-parallel sizes; a clear error when it does not divide."""
        for field_name in ("tp", "pp", "ep", "etp"):
            if getattr(self, field_name) < 1:
                raise ValueError(f"{name}.{field_name} must be >= 1, got {getattr(self, field_name)}")
        dense = self.tp * self.pp
        if world_size % dense:
            raise ValueError(
                f"{name}: tp*pp = {self.tp}*{self.pp} = {dense} does not divide the world size {world_size}"
            )
        expert = self.etp * self.ep * self.pp
        if world_size % expert:
            raise ValueError(
                f"{name}: etp*ep*pp = {self.etp}*{self.ep}*{self.pp} = {expert} does not divide "
                f"the world size {world_size}"
            )
        return world_size // dense

    @property
    def model_parallel_size(self) -> int:
        return self.tp * self.pp


@dataclass
class ModelGrid:
    """One model's grids and process-group collection; `close()` gives its groups back (see `groups`)."""

    layout: ParallelLayout
    dense: HyperCommGrid
    expert: HyperCommGrid
    pgs: ProcessGroupCollection
    dp_size: int
    rank_lists: list[list[list[int]]] = field(default_factory=list, repr=False)  # what `close` releases

    @property
    def ranks(self) -> range:
        """The global ranks this grid spans."""
        return range(self.dense.rank_offset, self.dense.rank_offset + int(self.dense.size))

    @property
    def tp_rank(self) -> int:
        return dist.get_rank(self.pgs.tp)

    @property
    def pp_rank(self) -> int:
        return dist.get_rank(self.pgs.pp)

    @property
    def dp_rank(self) -> int:
        return dist.get_rank(self.pgs.dp)

    @property
    def ep_rank(self) -> int:
        return dist.get_rank(self.pgs.ep)

    @property
    def etp_rank(self) -> int:
        return dist.get_rank(self.pgs.expt_tp)

    def close(self) -> None:
        """Release this grid's groups (collective: every rank closes its grids in the same order). Idempotent."""
        lists, self.rank_lists = self.rank_lists, []
        for rank_lists in reversed(lists):
            groups.release(rank_lists)

    def __enter__(self) -> "ModelGrid":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def build_model_grid(
    layout: ParallelLayout, name: str = "model", rank_offset: int = 0, timeout: Optional[timedelta] = None,
    size: Optional[int] = None,
) -> ModelGrid:
    """Build the dense and expert grids of ``layout`` over ranks ``[rank_offset, rank_offset + size)`` (default:
    the rest of the world) and the matching `ProcessGroupCollection`.

    Groups come from the shared registry (`groups.acquire`): identical rank sets share one group, and a
    layout built twice creates none. Collective: every rank of the world must call it with the same
    arguments, in the same order, and close the grid when done with it.
    """
    world = dist.get_world_size() - rank_offset if size is None else size
    if world < 1 or rank_offset < 0 or rank_offset + world > dist.get_world_size():
        raise ValueError(f"{name}: ranks [{rank_offset}, {rank_offset + world}) are not inside the world of "
                         f"{dist.get_world_size()} ranks")
    dp = layout.data_parallel_size(world, name)
    edp = world // (layout.etp * layout.ep * layout.pp)

    dense = HyperCommGrid([layout.tp, 1, dp, layout.pp], ["tp", "cp", "dp", "pp"], rank_offset=rank_offset)
    expert = HyperCommGrid([layout.etp, layout.ep, edp, layout.pp], ["etp", "ep", "edp", "pp"],
                           rank_offset=rank_offset)
    acquired: list[list[list[int]]] = []

    def group_of(rank_lists: list[list[int]]) -> Optional[dist.ProcessGroup]:
        acquired.append(rank_lists)
        return groups.acquire(rank_lists, timeout)

    pgs = ProcessGroupCollection()
    pgs.tp = group_of(dense.get_rank_enum("tp"))
    pgs.cp = group_of(dense.get_rank_enum("cp"))
    pgs.dp = group_of(dense.get_rank_enum("dp"))
    pgs.pp = group_of(dense.get_rank_enum("pp"))
    pgs.mp = group_of(dense.get_rank_enum(["tp", "pp"]))
    pgs.tp_cp = group_of(dense.get_rank_enum(["tp", "cp"]))
    pgs.dp_cp = group_of(dense.get_rank_enum(["cp", "dp"]))
    pgs.tp_dp_cp = group_of(dense.get_rank_enum(["tp", "cp", "dp"]))
    pgs.hcp = None
    pgs.intra_dp_cp = pgs.dp_cp
    pgs.ep = group_of(expert.get_rank_enum("ep"))
    pgs.expt_tp = group_of(expert.get_rank_enum("etp"))
    pgs.expt_dp = group_of(expert.get_rank_enum("edp"))
    pgs.intra_expt_dp = pgs.expt_dp
    pgs.tp_ep = group_of(expert.get_rank_enum(["etp", "ep"]))
    pgs.tp_ep_pp = group_of(expert.get_rank_enum(["etp", "ep", "pp"]))
    # Embedding groups: first and last pipeline stage (tied embeddings), first stage (positions).
    pp_lists = dense.get_rank_enum("pp")
    pgs.embd = group_of([sorted({r[0], r[-1]}) for r in pp_lists])
    pgs.pos_embd = group_of([[r[0]] for r in pp_lists])
    return ModelGrid(layout=layout, dense=dense, expert=expert, pgs=pgs, dp_size=dp, rank_lists=acquired)


def build_teacher_and_student_grids(
    teacher: ParallelLayout, student: ParallelLayout = ParallelLayout(), timeout: Optional[timedelta] = None,
    teacher_ranks: int = 0,
) -> tuple[ModelGrid, ModelGrid]:
    """Both grids, teacher first (collective). ``teacher_ranks=0``: the co-located default, both over the whole
    world; otherwise the teacher pool is the last ``teacher_ranks`` ranks and the student has the others."""
    if student.pp != 1 or student.ep != 1:
        raise ValueError("student layout: only tp and data parallelism are supported (pp=1, ep=1)")
    if not teacher_ranks:
        return (build_model_grid(teacher, "teacher", timeout=timeout),
                build_model_grid(student, "student", timeout=timeout))
    students = dist.get_world_size() - teacher_ranks
    return (build_model_grid(teacher, "teacher", rank_offset=students, timeout=timeout, size=teacher_ranks),
            build_model_grid(student, "student", timeout=timeout, size=students))

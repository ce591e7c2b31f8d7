"""Who serves whom under teacher.placement=separate: `PayloadRoutes` against megatron-core's own rank layout
(`HyperCommGrid` with rank_offset, as `build_model_grid` builds the two grids), for pools of every shape."""

import itertools

import pytest
from megatron.core.hyper_comm_grid import HyperCommGrid

from tide_megatron.distributed.payload_links import PayloadRoutes

LAYOUTS = [  # (student ranks, student tp, teacher ranks, teacher tp, teacher pp)
    (2, 1, 2, 2, 1), (2, 1, 2, 1, 1), (4, 2, 4, 2, 2), (6, 1, 3, 1, 1), (8, 2, 4, 1, 2), (4, 1, 2, 1, 2),
]


def _grids(S, stp, T, ttp, tpp):
    student = HyperCommGrid([stp, 1, S // stp, 1], ["tp", "cp", "dp", "pp"])
    teacher = HyperCommGrid([ttp, 1, T // (ttp * tpp), tpp], ["tp", "cp", "dp", "pp"], rank_offset=S)
    return student, teacher


@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda v: "S{}tp{}-T{}tp{}pp{}".format(*v))
def test_routes_follow_the_grids_and_serve_every_student_rank_once(monkeypatch, layout):
    S, stp, T, ttp, tpp = layout
    monkeypatch.setenv("WORLD_SIZE", str(S + T))
    student, teacher = _grids(*layout)
    routes = PayloadRoutes(S, stp, T, ttp, tpp)
    # The teacher's model-parallel groups (tp x pp) are the replicas, in data-parallel order.
    mp_groups = teacher.get_rank_enum(["tp", "pp"])
    assert sorted(map(sorted, mp_groups)) == sorted(routes.replica_ranks(d) for d in range(routes.replicas))
    for d in range(routes.replicas):
        assert all(routes.replica_of(r) == d for r in routes.replica_ranks(d))
    # A replica's index is its ranks' teacher data-parallel rank (what the pool's dp group says).
    assert all(routes.replica_of(r) == i for group in teacher.get_rank_enum("dp") for i, r in enumerate(group))
    # A student rank's data-parallel index is its index in the student grid's dp groups.
    student_dp = {r: i for group in student.get_rank_enum("dp") for i, r in enumerate(group)}
    assert all(routes.student_rank(student_dp[r], r % stp) == r for r in range(S))
    # Every student rank is served by exactly one teacher rank of the replica serving its dp rank...
    served_by = {}
    for t in range(S, S + T):
        for dp_rank, students in routes.destinations(t).items():
            assert dp_rank % routes.replicas == routes.replica_of(t)
            for s in students:
                assert s not in served_by
                served_by[s] = t
    assert served_by == {s: routes.source(s) for s in range(S)}
    # ... and the senders of a replica share its students evenly.
    for d in range(routes.replicas):
        loads = [sum(len(v) for v in routes.destinations(t).values()) for t in routes.replica_ranks(d)]
        assert max(loads) - min(loads) <= 1
    assert sorted(itertools.chain.from_iterable(routes.served_dp_ranks(d) for d in range(routes.replicas))) == \
        list(range(S // stp))


def test_routes_refuse_replicas_that_do_not_divide_the_student():
    with pytest.raises(ValueError, match="3 teacher replicas do not divide the 2 student data-parallel ranks"):
        PayloadRoutes(2, 1, 3, 1, 1)

"""Process-group hygiene (issue: beyond two ranks, item 1): one group per distinct rank set, groups freed when
their last grid closes, and a trainer built and closed ten times leaves the thread count flat."""

from pathlib import Path

import torch.distributed as dist

from tide_megatron.distributed import ParallelLayout, build_model_grid, build_teacher_and_student_grids, groups
from tide_megatron.training.trainer import DistillTrainer
from tests.helpers import tiny_distill as td
from tests.helpers.multirank import shared_dir, tiny_config
from tests.helpers.world import thread_count


def test_identical_rank_sets_share_one_group():
    teacher, student = build_teacher_and_student_grids(ParallelLayout(tp=2), ParallelLayout())
    try:
        # Two ranks: the teacher's TP group and the student's DP group are the same rank set, hence one group,
        # and that group is the world's own.
        assert teacher.pgs.tp is student.pgs.dp is dist.group.WORLD
        assert teacher.pgs.dp is teacher.pgs.pp is student.pgs.tp is student.pgs.pp
        assert dist.get_world_size(teacher.pgs.dp) == 1
    finally:
        student.close()
        teacher.close()


def test_same_layout_twice_creates_no_group_and_close_frees_them():
    before = groups.live_rank_sets()
    first = build_model_grid(ParallelLayout(ep=2), "first")
    created = {k for k in groups.live_rank_sets() if k not in before}
    threads = thread_count()
    second = build_model_grid(ParallelLayout(ep=2), "second")
    assert thread_count() == threads
    assert {k for k in groups.live_rank_sets() if k not in before} == created
    assert second.pgs.ep is first.pgs.ep and second.pgs.expt_dp is first.pgs.expt_dp
    second.close()
    first.close()
    first.close()  # idempotent
    assert groups.live_rank_sets() == before


def test_trainer_built_and_closed_ten_times_keeps_threads_flat():
    root = shared_dir("artifacts-pg")
    if dist.get_rank() == 0:
        td.write_student(root / "student")
        td.write_moe_teacher(root / "moe")
    dist.barrier()
    before = groups.live_rank_sets()
    counts = []
    for i in range(10):
        cfg = tiny_config(root, "a_tide_cross", Path(shared_dir(f"pg-{i}")), teacher={"ep": 2})
        trainer = DistillTrainer(cfg, td.make_dataset(8, "A"))
        trainer.train_step([next(iter(trainer_batches(trainer)))])
        trainer.close()
        del trainer  # a closed group's threads end when its last holder (the model's modules) is collected
        counts.append(thread_count())
        assert groups.live_rank_sets() == before, i
    assert max(counts) - counts[0] <= 2 and min(counts) >= counts[0] - 2, counts


def trainer_batches(trainer):
    from tide_megatron.training.data import micro_batches

    return micro_batches(trainer.train_data, trainer.batches, trainer.collator, 0, 1)

"""Teacher and student grids on 2 gloo ranks, and megatron TP layers through the compat layer."""

import torch
import torch.distributed as dist
from megatron.core.model_parallel_config import ModelParallelConfig
from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear

from tide_megatron.distributed import ParallelLayout, build_teacher_and_student_grids, seed_model_parallel_rng


def test_colocated_grids_have_the_expected_groups(closing):
    teacher, student = map(closing, build_teacher_and_student_grids(ParallelLayout(tp=2), ParallelLayout()))
    assert dist.get_world_size(teacher.pgs.tp) == 2 and dist.get_world_size(teacher.pgs.dp) == 1
    assert dist.get_world_size(student.pgs.dp) == 2 and dist.get_world_size(student.pgs.tp) == 1
    assert student.dp_rank == dist.get_rank() and teacher.tp_rank == dist.get_rank()
    teacher_ep, _ = map(closing, build_teacher_and_student_grids(ParallelLayout(ep=2), ParallelLayout()))
    assert dist.get_world_size(teacher_ep.pgs.ep) == 2 and dist.get_world_size(teacher_ep.pgs.tp) == 1
    teacher_pp, _ = map(closing, build_teacher_and_student_grids(ParallelLayout(pp=2), ParallelLayout()))
    assert dist.get_world_size(teacher_pp.pgs.pp) == 2
    assert dist.get_world_size(teacher_pp.pgs.embd) == 2
    # Position embeddings live on the first stage only; the last stage is in no such group.
    assert (teacher_pp.pgs.pos_embd is not None) == (teacher_pp.pp_rank == 0)


def test_tp2_mlp_equals_dense_reference(closing):
    teacher, _ = map(closing, build_teacher_and_student_grids(ParallelLayout(tp=2)))
    seed_model_parallel_rng(1234, tp_rank=teacher.tp_rank)
    cfg = ModelParallelConfig(tensor_model_parallel_size=2, use_cpu_initialization=True,
                              params_dtype=torch.float32)
    init = torch.nn.init.normal_
    col = ColumnParallelLinear(8, 16, config=cfg, init_method=init, bias=False, gather_output=False,
                               tp_group=teacher.pgs.tp)
    row = RowParallelLinear(16, 8, config=cfg, init_method=init, bias=False, input_is_parallel=True,
                            skip_bias_add=True, tp_group=teacher.pgs.tp)
    x = torch.randn(4, 8, generator=torch.Generator().manual_seed(0))
    y, _ = row(torch.relu(col(x)[0]))
    w1 = [torch.empty_like(col.weight) for _ in range(2)]
    w2 = [torch.empty_like(row.weight) for _ in range(2)]
    dist.all_gather(w1, col.weight.detach(), group=teacher.pgs.tp)
    dist.all_gather(w2, row.weight.detach(), group=teacher.pgs.tp)
    reference = torch.relu(x @ torch.cat(w1).T) @ torch.cat(w2, dim=1).T
    torch.testing.assert_close(y, reference, atol=1e-6, rtol=1e-6)

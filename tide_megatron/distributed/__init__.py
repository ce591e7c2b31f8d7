"""Process groups, grids and the CPU compatibility layer for megatron-core."""

from tide_megatron.distributed.grids import ModelGrid, ParallelLayout, build_model_grid, build_teacher_and_student_grids
from tide_megatron.distributed.init import destroy_distributed, init_distributed, seed_model_parallel_rng

__all__ = ["ModelGrid", "ParallelLayout", "build_model_grid", "build_teacher_and_student_grids",
           "destroy_distributed", "init_distributed", "seed_model_parallel_rng"]

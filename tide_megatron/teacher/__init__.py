"""The frozen teacher: its inputs for a noised micro-batch, its forward on the teacher grid, loss-sized payloads (§2, §4)."""

from tide_megatron.teacher.engine import TeacherEngine
from tide_megatron.teacher.passes import TeacherPasses, build_teacher_passes, run_teacher_passes
from tide_megatron.teacher.payloads import logit_rows, token_logprobs

__all__ = ["TeacherEngine", "TeacherPasses", "build_teacher_passes", "logit_rows", "run_teacher_passes",
           "token_logprobs"]

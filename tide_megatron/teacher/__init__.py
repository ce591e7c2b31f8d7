"""Teacher engine: inference-only teacher forwards on the teacher grid and loss-sized payloads (§2)."""

from tide_megatron.teacher.engine import TeacherEngine
from tide_megatron.teacher.payloads import TopKRows, logit_rows, token_logprobs, topk_rows

__all__ = ["TeacherEngine", "TopKRows", "logit_rows", "token_logprobs", "topk_rows"]

"""Payload maths (no TP group) against a full-logit computation (§9 pitfalls 1, 12, 21)."""

import pytest
import torch

from tide_megatron.teacher.payloads import logit_rows, token_logprobs


@pytest.fixture
def data():
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(3, 7, 16, generator=gen)
    weight = torch.randn(40, 16, generator=gen)
    return hidden, weight, hidden @ weight.t()


def test_token_logprobs_chunked_equal_full(data):
    hidden, weight, logits = data
    targets = torch.randint(0, 40, (3, 7), generator=torch.Generator().manual_seed(1))
    targets[2, 6] = -100
    got = token_logprobs(hidden, weight, targets, chunk_tokens=4)  # chunks do not divide b*L = 21
    want = logits.log_softmax(-1).gather(-1, targets.clamp_min(0)[..., None]).squeeze(-1)
    want[2, 6] = 0
    assert got.dtype == torch.float32
    assert torch.allclose(got, want, atol=1e-5)


def test_token_logprobs_runs_the_lm_head_only_where_a_target_is_asked(data):
    hidden, weight, logits = data
    targets = torch.full((3, 7), -1)
    targets[0, 1], targets[1, 4], targets[2, 6] = 5, 17, 39
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        got = token_logprobs(hidden, weight, targets, chunk_tokens=1)
    matmuls = sum(e.count for e in prof.key_averages() if e.key == "aten::mm")
    assert matmuls == 3  # one LM-head chunk per requested position, none for the 18 others
    want = torch.zeros(3, 7)
    for b, i in ((0, 1), (1, 4), (2, 6)):
        want[b, i] = logits[b, i].log_softmax(-1)[targets[b, i]]
    assert torch.allclose(got, want, atol=1e-5)


def test_token_logprobs_bf16_inputs_use_fp32_math(data):
    hidden, weight, _ = data
    targets = torch.zeros(3, 7, dtype=torch.long)
    got = token_logprobs(hidden.bfloat16(), weight.bfloat16(), targets)
    want = (hidden.bfloat16() @ weight.bfloat16().t()).float().log_softmax(-1)[..., 0]
    assert got.dtype == torch.float32 and torch.allclose(got, want, atol=1e-5)


def test_logit_rows(data):
    hidden, weight, logits = data
    rows = hidden[[0, 2], [1, 5]]
    got = logit_rows(rows, weight, vocab_limit=25)
    assert torch.allclose(got, logits[[0, 2], [1, 5], :25], atol=1e-5)


def test_bad_arguments(data):
    hidden, weight, _ = data
    with pytest.raises(ValueError, match="vocab_limit=41"):
        logit_rows(hidden[0], weight, vocab_limit=41)
    with pytest.raises(ValueError, match="targets shape"):
        token_logprobs(hidden, weight, torch.zeros(3, 6, dtype=torch.long))

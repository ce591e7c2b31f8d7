"""TeacherEngine in one process: bf16 inference against the fp32 reference, no gradients, and bad
arguments rejected with a clear error (§2, §9.11-12)."""

import pytest
import torch

from tests.reference.llada2_checkpoint import build_random_reference, write_tiny_llada2
from tide_megatron.distributed import ParallelLayout, build_model_grid, init_distributed, seed_model_parallel_rng
from tide_megatron.models.llada2 import load_llada2_teacher
from tide_megatron.teacher import TeacherEngine


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    init_distributed("gloo")
    grid = build_model_grid(ParallelLayout(), "teacher")
    seed_model_parallel_rng(0)
    path = write_tiny_llada2(tmp_path_factory.mktemp("llada2"), seed=4)
    return grid.pgs, path


def test_bf16_engine_close_to_fp32_reference_and_gradient_free(setup):
    pgs, path = setup
    model, cfg = load_llada2_teacher(path, pgs, torch.bfloat16)
    engine = TeacherEngine(model, pgs, pad_token_id=cfg.pad_token_id)
    ids = torch.randint(0, 120, (2, 9), generator=torch.Generator().manual_seed(0))
    targets = torch.roll(ids, 1, 1)
    lp = engine.token_logprobs(ids, targets)
    assert lp.dtype == torch.float32 and not lp.requires_grad
    assert all(not p.requires_grad for p in model.parameters())
    with torch.no_grad():
        ref = build_random_reference(4)(ids).logits.float().log_softmax(-1)
    want = ref.gather(-1, targets[..., None]).squeeze(-1)
    # bf16 weights and activations: a loose bound, but far below the spread of log-probs (several nats)
    assert (lp - want).abs().max() < 0.5
    assert torch.corrcoef(torch.stack([lp.flatten(), want.flatten()]))[0, 1] > 0.99


def test_bad_arguments_are_named(setup):
    pgs, path = setup
    model, cfg = load_llada2_teacher(path, pgs, torch.float32)
    engine = TeacherEngine(model, pgs, pad_token_id=cfg.pad_token_id)
    ids = torch.zeros(2, 6, dtype=torch.long)
    with pytest.raises(ValueError, match="rows must index"):
        engine.logit_rows(ids, torch.tensor([[0, 6]]), 100)
    with pytest.raises(ValueError, match="vocab_limit=129"):
        engine.logit_rows(ids, torch.tensor([[0, 1]]), 129)
    with pytest.raises(ValueError, match="teacher vocabulary size 128"):
        engine.token_logprobs(ids, torch.full((2, 6), 128))
    with pytest.raises(ValueError, match="attention_mask must be"):
        engine.token_logprobs(ids, ids, attention_mask=torch.ones(2, 5, 5, dtype=torch.bool))

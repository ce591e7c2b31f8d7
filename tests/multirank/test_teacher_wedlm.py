"""WeDLM teacher (Qwen3 layout) on megatron-core vs transformers.Qwen3ForCausalLM under the same 4-D
[x0 ; xt] block-diffusion mask with duplicated positions, at TP=1, TP=2 and PP=2 (§2.2, §9.4-5, §9.17), and a
tied-embedding variant at PP=2 (its LM head lives on the first stage's embedding)."""

import tempfile
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from tests.reference.wedlm_checkpoint import load_reference, wedlm_inputs, write_tiny_wedlm, xt_rows
from tide_megatron.distributed import ParallelLayout, build_model_grid, seed_model_parallel_rng
from tide_megatron.models.wedlm import load_wedlm_teacher
from tide_megatron.teacher import TeacherEngine

L, BLOCK = 8, 4


def _write_checkpoint(tied: bool) -> Path:
    holder = [tempfile.mkdtemp(prefix="tide-wedlm-") if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(holder, src=0)
    if dist.get_rank() == 0:
        write_tiny_wedlm(Path(holder[0]), seed=0, tied=tied)
    dist.barrier()
    return Path(holder[0])


@pytest.fixture(scope="module")
def checkpoint() -> Path:
    return _write_checkpoint(tied=False)


@pytest.fixture(scope="module")
def tied_checkpoint() -> Path:
    return _write_checkpoint(tied=True)


@pytest.fixture(scope="module")
def inputs():
    gen = torch.Generator().manual_seed(5)
    x0 = torch.randint(0, 120, (2, L), generator=gen)
    xt = x0.clone()
    xt[torch.rand(2, L, generator=gen) < 0.5] = 125  # the tiny model's "mask" id
    pad = torch.ones(2, L, dtype=torch.long)
    pad[1, 6:] = 0
    return wedlm_inputs(x0, xt, BLOCK, pad), pad


@pytest.fixture(scope="module")
def reference_logits(checkpoint, inputs):
    (ids, pos, allowed), _ = inputs
    additive = torch.zeros(allowed.shape).masked_fill(~allowed, torch.finfo(torch.float32).min)
    with torch.no_grad():
        return load_reference(checkpoint)(input_ids=ids, position_ids=pos, attention_mask=additive).logits.float()


@pytest.mark.parametrize("layout, mbs", [(ParallelLayout(), None), (ParallelLayout(tp=2), None),
                                         (ParallelLayout(pp=2), 1)], ids=["tp1", "tp2", "pp2"])
def test_xt_half_matches_transformers_qwen3(closing, layout, mbs, checkpoint, inputs, reference_logits):
    grid = closing(build_model_grid(layout, "teacher"))
    seed_model_parallel_rng(0, grid.tp_rank)
    model, _ = load_wedlm_teacher(checkpoint, grid.pgs, torch.float32)
    engine = TeacherEngine(model, grid.pgs, pad_token_id=126, micro_batch_size=mbs)
    (ids, pos, allowed), pad = inputs
    rows = torch.nonzero(pad.bool())  # real xt positions (batch, i)
    got = engine.logit_rows(ids, xt_rows(rows, L), engine.vocab_size, attention_mask=allowed, position_ids=pos)
    want = reference_logits[rows[:, 0], rows[:, 1] + L]  # the second (xt) half, §9 pitfall 4
    assert (got - want).abs().max().item() < 1e-4
    targets = torch.cat([ids[:, :L], ids[:, :L]], 1)  # log p(x0_i) at xt_i (and at x0_i)
    lp = engine.token_logprobs(ids, targets, attention_mask=allowed, position_ids=pos)
    full = reference_logits.log_softmax(-1).gather(-1, targets[..., None]).squeeze(-1)
    real = pad.bool().repeat(1, 2)
    assert (lp - full)[real].abs().max().item() < 1e-4
    # the wrong half really differs (the test can tell x0 rows from xt rows)
    assert (reference_logits[rows[:, 0], rows[:, 1]] - want).abs().max() > 1e-2


def test_tied_embedding_teacher_at_pp2_matches_transformers(closing, tied_checkpoint, inputs):
    """PP=2 splits a tied head from its embedding: the last stage's LM head must be the embedding's copy."""
    (ids, pos, allowed), pad = inputs
    additive = torch.zeros(allowed.shape).masked_fill(~allowed, torch.finfo(torch.float32).min)
    reference = load_reference(tied_checkpoint)
    assert reference.lm_head.weight is reference.model.embed_tokens.weight
    with torch.no_grad():
        want_all = reference(input_ids=ids, position_ids=pos, attention_mask=additive).logits.float()
    grid = closing(build_model_grid(ParallelLayout(pp=2), "teacher"))
    seed_model_parallel_rng(0, grid.tp_rank)
    model, args = load_wedlm_teacher(tied_checkpoint, grid.pgs, torch.float32)
    assert args.tie_embeddings and model.share_embeddings_and_output_weights
    engine = TeacherEngine(model, grid.pgs, pad_token_id=126, micro_batch_size=1)
    if engine.is_last_stage:
        torch.testing.assert_close(engine.lm_head_weight, reference.model.embed_tokens.weight, rtol=0, atol=0)
    rows = torch.nonzero(pad.bool())
    got = engine.logit_rows(ids, xt_rows(rows, L), engine.vocab_size, attention_mask=allowed, position_ids=pos)
    assert (got - want_all[rows[:, 0], rows[:, 1] + L]).abs().max().item() < 1e-4
    targets = torch.cat([ids[:, :L], ids[:, :L]], 1)
    lp = engine.token_logprobs(ids, targets, attention_mask=allowed, position_ids=pos)
    full = want_all.log_softmax(-1).gather(-1, targets[..., None]).squeeze(-1)
    assert (lp - full)[pad.bool().repeat(1, 2)].abs().max().item() < 1e-4

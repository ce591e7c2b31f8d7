"""Student on 2 gloo ranks: conversion written at TP=2 or PP=2, loaded at TP=2 (parity with transformers,
exact way back to HF), TP=2 (and TP=2+SP) logits == TP=1, DP=2 megatron-DDP gradients == one rank."""

import os
import shutil
import tempfile

import pytest
import torch
import torch.distributed as dist

from tide_megatron.cli.convert import main as tide_convert
from tide_megatron.cli.convert import run as tide_convert_run
from tide_megatron.diffusion import bd3lm_inputs, block_diffusion_mask, mask_tokens, sample_t
from tide_megatron.distributed import (ParallelLayout, build_model_grid, build_teacher_and_student_grids,
                                       seed_model_parallel_rng)
from tide_megatron.losses.ce import bd3lm_ce
from tide_megatron.models.qwen3 import build_qwen3_model, qwen3_args_from_hf
from tide_megatron.models.convert.mcore_dir import args_from_mcore, load_mcore_checkpoint
from tide_megatron.models.qwen3.convert import QWEN3
from tide_megatron.models.qwen3.tiny import save_tiny_qwen3, tiny_qwen3_config
from tide_megatron.models.safetensors_reader import SafetensorsReader


def _shared_tmpdir() -> str:
    path = [tempfile.mkdtemp(prefix="tide-student-") if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(path, src=0)
    return path[0]


@pytest.fixture(scope="module", params=["tp", "pp"])
def two_rank_checkpoint(request):
    """A tiny HF checkpoint converted by 2 ranks at TP=2 or at PP=2."""
    root = _shared_tmpdir()
    hf = os.path.join(root, "hf")
    if dist.get_rank() == 0:
        save_tiny_qwen3(hf, seed=3, max_shard_size="40KB")
    dist.barrier()
    mcore = os.path.join(root, f"mcore_{request.param}2")
    assert tide_convert(["hf-to-mcore", "--hf-dir", hf, "--mcore-dir", mcore, f"--{request.param}", "2"]) == 0
    yield hf, mcore, root
    dist.barrier()
    if dist.get_rank() == 0:
        shutil.rmtree(root, ignore_errors=True)


def test_tp2_megatron_logits_equal_transformers(two_rank_checkpoint):
    hf, mcore, _ = two_rank_checkpoint
    diffs = tide_convert_run(["verify", "--hf-dir", hf, "--mcore-dir", mcore, "--seq-length", "16",
                              "--block-size", "4"])
    assert max(diffs.values()) <= 1e-4, diffs


def test_two_rank_checkpoint_back_to_hf_is_exact(two_rank_checkpoint):
    hf, mcore, root = two_rank_checkpoint
    back = os.path.join(root, "hf_back")
    assert tide_convert(["mcore-to-hf", "--mcore-dir", mcore, "--hf-dir", back]) == 0
    original, restored = SafetensorsReader(hf), SafetensorsReader(back)
    assert set(original.keys()) == set(restored.keys())
    for key in original.keys():
        assert torch.equal(original.get(key), restored.get(key)), key


def _model(closing, mcore, tp, sequence_parallel=False):
    args = args_from_mcore(QWEN3, mcore, tp=tp, sequence_parallel=sequence_parallel)
    grid = closing(build_model_grid(ParallelLayout(tp=tp), f"tp{tp}"))
    seed_model_parallel_rng(1234, tp_rank=grid.tp_rank)  # SP's embedding forks the model-parallel RNG
    model = build_qwen3_model(args, grid.pgs, parallel_output=False)
    load_mcore_checkpoint(model, mcore)
    return model.eval()


def test_tp2_logits_equal_tp1(closing, two_rank_checkpoint):
    _, mcore, _ = two_rank_checkpoint
    L = 16
    g = torch.Generator().manual_seed(5)
    x0 = torch.randint(0, 128, (2, L), generator=g)
    xt, _ = mask_tokens(x0, x0, torch.tensor([0.3, 0.7]), 127, generator=g)
    ids, pos = bd3lm_inputs(xt, x0)
    mask = block_diffusion_mask(L, 4)
    with torch.no_grad():
        tp1 = _model(closing, mcore, 1)(ids, pos, mask)
        tp2 = _model(closing, mcore, 2)(ids, pos, mask)
        tp2_sp = _model(closing, mcore, 2, sequence_parallel=True)(ids, pos, mask, logits_rows=slice(0, L))
    assert tp1.shape == tp2.shape == (2, 2 * L, 128)
    torch.testing.assert_close(tp2, tp1, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(tp2_sp, tp1[:, :L], atol=1e-5, rtol=1e-5)


def test_dp2_ddp_gradients_equal_single_rank_on_concatenated_batch(closing):
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig

    _, student = map(closing, build_teacher_and_student_grids(ParallelLayout(tp=2), ParallelLayout()))
    assert student.dp_size == 2
    args = qwen3_args_from_hf(tiny_qwen3_config().to_dict())
    torch.manual_seed(11)
    model = build_qwen3_model(args, student.pgs)
    torch.manual_seed(11)
    reference = build_qwen3_model(args, closing(build_model_grid(ParallelLayout(), "reference")).pgs)
    for p, q in zip(model.parameters(), reference.parameters()):
        assert torch.equal(p, q)
    ddp = DistributedDataParallel(args.config, DistributedDataParallelConfig(grad_reduce_in_fp32=True),
                                  module=model, pg_collection=student.pgs)

    # The concatenated batch (4 sequences, every token maskable so each half has the same N_maskable and
    # the per-micro-batch normalisation of §9.9 averages to the whole-batch one).
    L = 16
    g = torch.Generator().manual_seed(21)
    x0 = torch.randint(0, 127, (4, L), generator=g)
    t = sample_t(4, generator=g)
    xt, masked = mask_tokens(x0, x0, t, 127, generator=g)
    ids, pos = bd3lm_inputs(xt, x0)
    mask = block_diffusion_mask(L, 4)

    def loss_of(m, rows):
        logits = m(ids[rows], pos[rows], mask, logits_rows=slice(0, L))
        return bd3lm_ce(logits, x0[rows], masked[rows], torch.ones_like(masked[rows]), t[rows])

    r = student.dp_rank
    ddp.zero_grad_buffer()
    loss_of(ddp, slice(2 * r, 2 * r + 2)).backward()
    ddp.finish_grad_sync()
    loss_of(reference, slice(0, 4)).backward()
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p.main_grad, q.grad, atol=1e-6, rtol=1e-5, msg=name)

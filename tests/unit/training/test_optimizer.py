"""The student optimizer runs torch's fused AdamW where megatron falls back to torch (no TE / apex), with the
updates of the per-parameter AdamW megatron builds (§7.1): same parameters after clipped steps. At one rank the
distributed optimizer's step skips the parameter all-gather and gives plain torch AdamW's parameters. megatron's
local `multi_tensor_scale` fallback is replaced by one that writes into its targets, with the same values."""

import pytest
import torch
from megatron.core.distributed import param_and_grad_buffer
from megatron.core.optimizer import clip_grads
from megatron.core.utils import local_multi_tensor_scale

from tide_megatron.config import OptimConfig, PrecisionConfig, StudentConfig
from tide_megatron.distributed import init_distributed, seed_model_parallel_rng
from tide_megatron.distributed.grids import ParallelLayout, build_model_grid
from tide_megatron.models.llada2.model import ensure_megatron_runtime
from tide_megatron.models.qwen3.tiny import save_tiny_qwen3
from tide_megatron.training import optimizer as student_optimizer
from tide_megatron.training.models import build_student
from tide_megatron.training.optimizer import build_optimizer, reduce_gradients, wrap_ddp


def _student(tmp_path, grid, dtype="fp32"):
    hf_dir = str(tmp_path / "student")
    save_tiny_qwen3(hf_dir, seed=3, vocab_size=64)
    seed_model_parallel_rng(0)
    return build_student(StudentConfig(checkpoint=hf_dir, seq_length=8, block_size=4), PrecisionConfig(dtype=dtype),
                         grid).model


def _inner(optimizer):
    return [o.optimizer for o in getattr(optimizer, "chained_optimizers", [optimizer])]


def test_fused_adamw_gives_the_per_parameter_adamw_updates(tmp_path):
    init_distributed("gloo")
    grid = build_model_grid(ParallelLayout(), "student-optimizer")
    ensure_megatron_runtime(grid.pgs)
    optim = OptimConfig(lr=1e-2, weight_decay=0.1, clip_grad=0.05)
    sides = []
    for fused in (True, False):
        ddp = wrap_ddp(_student(tmp_path, grid), grid.pgs)
        opt = build_optimizer(ddp, optim, grid.pgs, bf16=False)
        groups = [g for inner in _inner(opt) for g in inner.param_groups]
        if type(_inner(opt)[0]) is not torch.optim.AdamW:
            pytest.skip("megatron uses TE's / apex's FusedAdam here, not torch's AdamW")
        assert all(g["fused"] for g in groups)
        if not fused:  # megatron's own fallback: torch's per-parameter AdamW
            for g in groups:
                g["fused"] = False
        sides.append((ddp, opt))
    initial = [p.detach().clone() for p in sides[0][0].module.parameters()]
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 60, (2, 8), generator=gen)
    pos = torch.arange(8).expand(2, 8)
    for _ in range(3):
        for ddp, opt in sides:
            ddp.zero_grad_buffer()
            opt.zero_grad()
            ddp(ids, pos, None).square().mean().backward()
            reduce_gradients(ddp, grid.pgs)
            _, grad_norm, _ = opt.step()
            assert grad_norm > optim.clip_grad  # clipping is active
    (fused_model, _), (plain_model, _) = sides
    # Three updates of ~lr each: the two kernels agree to rounding (a different order of the same fp32 ops).
    for (name, a), b, a0 in zip(fused_model.module.named_parameters(), plain_model.module.parameters(), initial):
        assert (a - a0).abs().max() > optim.lr, name
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    grid.close()


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_one_rank_step_skips_the_parameter_all_gather_and_matches_torch_adamw(tmp_path, monkeypatch, dtype):
    """One rank: the updated shard is the whole parameter buffer, so megatron's all-gather (a whole-buffer copy on
    gloo) is skipped; the parameters are those of torch AdamW + clipping on an fp32 copy (bf16: cast back)."""
    init_distributed("gloo")
    grid = build_model_grid(ParallelLayout(), "student-one-rank-step")
    ensure_megatron_runtime(grid.pgs)
    optim = OptimConfig(lr=1e-2, weight_decay=0.0, clip_grad=0.05)
    model = _student(tmp_path, grid, dtype)
    reference = [torch.nn.Parameter(p.detach().float().clone()) for p in model.parameters()]
    ddp = wrap_ddp(model, grid.pgs)
    opt = build_optimizer(ddp, optim, grid.pgs, bf16=dtype == "bf16")
    plain = torch.optim.AdamW(reference, lr=optim.lr, betas=(optim.adam_beta1, optim.adam_beta2),
                              eps=optim.adam_eps, weight_decay=0.0)
    gathers = []
    real = param_and_grad_buffer.dist_all_gather_func
    monkeypatch.setattr(param_and_grad_buffer, "dist_all_gather_func",
                        lambda *a, **k: gathers.append(1) or real(*a, **k))
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 60, (2, 8), generator=gen)
    pos = torch.arange(8).expand(2, 8)
    initial = [p.detach().float().clone() for p in model.parameters()]
    for _ in range(3):
        ddp.zero_grad_buffer()
        opt.zero_grad()
        ddp(ids, pos, None).float().square().mean().backward()
        reduce_gradients(ddp, grid.pgs)
        _, grad_norm, _ = opt.step()
        assert grad_norm > optim.clip_grad  # clipping is active
        plain.zero_grad()
        # The reference takes the model's own gradients (bf16: computed from its rounded weights).
        for p, q in zip(model.parameters(), reference):
            q.grad = p.main_grad.float().clone()
        torch.nn.utils.clip_grad_norm_(reference, optim.clip_grad)
        plain.step()
    assert not gathers
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == "fp32" else dict(rtol=8e-3, atol=1e-5)  # bf16: within rounding
    for (name, p), q, p0 in zip(model.named_parameters(), reference, initial):
        assert (p.float() - p0).abs().max() > optim.lr, name
        torch.testing.assert_close(p, q.to(p.dtype), **tol, msg=name)
    grid.close()


def test_in_place_tensor_scale_gives_megatrons_fallback_values_and_leaves_other_kernels(monkeypatch):
    gen = torch.Generator().manual_seed(0)
    srcs = [torch.randn(5, 7, generator=gen), torch.randn(300, generator=gen)]
    for dst_dtype in (torch.float32, torch.bfloat16):  # clipping (dst is src) and megatron's fp32 -> bf16 copies
        for same in (True, False):
            want_dst = [s.clone() if same else torch.empty_like(s, dtype=dst_dtype) for s in srcs]
            got_dst = [s.clone() if same else torch.empty_like(s, dtype=dst_dtype) for s in srcs]
            want_src = want_dst if same else srcs
            got_src = got_dst if same else srcs
            local_multi_tensor_scale(2048, None, [want_src, want_dst], 0.37)
            ptrs = [d.data_ptr() for d in got_dst]
            student_optimizer._scale_into(2048, None, [got_src, got_dst], 0.37)
            assert [d.data_ptr() for d in got_dst] == ptrs
            for w, g in zip(want_dst, got_dst):
                assert torch.equal(w, g)
    monkeypatch.setattr(clip_grads, "multi_tensor_scale_impl", local_multi_tensor_scale)
    student_optimizer.scale_tensors_in_place()
    assert clip_grads.multi_tensor_scale_impl is student_optimizer._scale_into
    kernel = object()  # TE's / apex's multi_tensor_scale
    monkeypatch.setattr(clip_grads, "multi_tensor_scale_impl", kernel)
    student_optimizer.scale_tensors_in_place()
    assert clip_grads.multi_tensor_scale_impl is kernel

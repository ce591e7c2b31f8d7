"""Spec §9.9: under data parallelism each rank normalises its loss over its own micro-batch and the gradients
are averaged across ranks; not one global token count. Checked on the trainer's DDP wrapper and gradient
reduction (distributed-optimizer layout) against a single-rank reference (see docs/PITFALLS.md). The optimizer
step that follows gathers every rank's updated shard: each rank holds torch AdamW's parameters."""

import torch
import torch.distributed as dist

from tide_megatron.config import OptimConfig
from tide_megatron.diffusion import bd3lm_inputs, block_diffusion_mask
from tide_megatron.distributed import ParallelLayout, build_model_grid, build_teacher_and_student_grids
from tide_megatron.losses.ce import bd3lm_ce
from tide_megatron.models.qwen3 import build_qwen3_model, qwen3_args_from_hf
from tide_megatron.models.qwen3.tiny import tiny_qwen3_config
from tide_megatron.training.optimizer import build_optimizer, one_rank_optimizer_shards, reduce_gradients, wrap_ddp
from tests.helpers.multirank import gather_reduced_gradient

L, B, MASK = 16, 4, 127



def test_each_rank_normalises_locally_and_gradients_are_averaged(closing):
    _, student = map(closing, build_teacher_and_student_grids(ParallelLayout(tp=2), ParallelLayout()))
    assert student.dp_size == 2
    args = qwen3_args_from_hf(tiny_qwen3_config().to_dict())
    torch.manual_seed(7)
    model = build_qwen3_model(args, student.pgs)
    torch.manual_seed(7)
    reference = build_qwen3_model(args, closing(build_model_grid(ParallelLayout(), "reference")).pgs)
    ddp = wrap_ddp(model, student.pgs)
    assert not one_rank_optimizer_shards(ddp)  # two ranks: the reduce-scatter path and the all-gather
    optim = OptimConfig(lr=1e-2, clip_grad=1e9)
    optimizer = build_optimizer(ddp, optim, student.pgs, bf16=False)

    g = torch.Generator().manual_seed(3)
    x0 = torch.randint(0, MASK, (4, L), generator=g)
    maskable = torch.ones(4, L, dtype=torch.bool)
    maskable[2:, : L - 4] = False  # rank 1's micro-batch has 8 maskable tokens, rank 0's has 32
    masked = maskable & (torch.rand(4, L, generator=g) < 0.7)
    masked[:, -1] = True
    t = torch.tensor([0.2, 0.5, 0.3, 0.9])
    xt = torch.where(masked, MASK, x0)
    ids, pos = bd3lm_inputs(xt, x0)
    mask = block_diffusion_mask(L, B)

    def ce(m, rows):
        logits = m(ids[rows], pos[rows], mask, logits_rows=slice(0, L))
        return bd3lm_ce(logits, x0[rows], masked[rows], maskable[rows], t[rows])

    r = student.dp_rank
    ddp.zero_grad_buffer()
    ce(ddp, slice(2 * r, 2 * r + 2)).backward()
    reduce_gradients(ddp, student.pgs)
    gather_reduced_gradient(ddp)

    local = 0.5 * (ce(reference, slice(0, 2)) + ce(reference, slice(2, 4)))
    want = torch.autograd.grad(local, list(reference.parameters()))
    # The global-count alternative (one N_maskable for the whole batch) gives other gradients here.
    global_count = ce(reference, slice(0, 4))
    other = torch.autograd.grad(global_count, list(reference.parameters()))
    differs = False
    for (name, p), w, o in zip(model.named_parameters(), want, other):
        torch.testing.assert_close(p.main_grad, w, atol=1e-6, rtol=1e-5, msg=name)
        differs |= not torch.allclose(w, o, atol=1e-5, rtol=1e-3)
    assert differs

    plain = [torch.nn.Parameter(p.detach().clone()) for p in reference.parameters()]
    for q, w in zip(plain, want):
        q.grad = w
    torch.optim.AdamW(plain, lr=optim.lr, eps=optim.adam_eps, weight_decay=0.0).step()
    before = [p.detach().clone() for p in model.parameters()]
    optimizer.step()
    for (name, p), q, p0 in zip(model.named_parameters(), plain, before):
        assert (p - p0).abs().max() > 0.5 * optim.lr, name  # both ranks' halves of the buffer moved
        torch.testing.assert_close(p, q, atol=1e-6, rtol=1e-5, msg=name)

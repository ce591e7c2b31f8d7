"""The student's gradients under megatron DDP on one rank: the word embedding's weight gradient index-added into
``main_grad`` (models/embedding.py), the linear layers' weight gradients accumulated into it (megatron's
gradient-accumulation fusion, distributed/cpu_compat.py on CPU) and the one-rank all-reduce
(training/optimizer.reduce_gradients) give the gradients plain autograd gives the same model without DDP, tied
output weight included."""

import pytest
import torch
from megatron.core.distributed import param_and_grad_buffer
from megatron.core.tensor_parallel import VocabParallelEmbedding
from megatron.core.tensor_parallel import layers as mcore_layers

from tide_megatron.distributed import init_distributed
from tide_megatron.distributed.grids import ParallelLayout, build_model_grid
from tide_megatron.models.embedding import MainGradEmbedding
from tide_megatron.models.llada2.model import ensure_megatron_runtime
from tide_megatron.models.qwen3 import build_qwen3_model, qwen3_args_from_hf
from tide_megatron.models.qwen3.tiny import tiny_qwen3_config
from tide_megatron.training.optimizer import one_rank_optimizer_shards, reduce_gradients, wrap_ddp


@pytest.mark.parametrize("fusion", [False, True], ids=["wgrad-via-grad", "wgrad-fusion"])
def test_main_grad_embedding_and_one_rank_reduction_match_plain_autograd(monkeypatch, fusion):
    init_distributed("gloo")
    grid = build_model_grid(ParallelLayout(), "ddp-gradients")
    ensure_megatron_runtime(grid.pgs)
    assert mcore_layers._grad_accum_fusion_available  # the CPU kernel is bound
    hf = tiny_qwen3_config().to_dict()
    args = qwen3_args_from_hf(hf)
    torch.manual_seed(5)
    model = build_qwen3_model(qwen3_args_from_hf(hf, gradient_accumulation_fusion=fusion), grid.pgs)
    torch.manual_seed(5)
    reference = build_qwen3_model(args, grid.pgs)
    assert type(model.embedding.word_embeddings) is MainGradEmbedding
    assert model.share_embeddings_and_output_weights  # the weight gets the embedding's and the head's gradients
    reference.embedding.word_embeddings.__class__ = VocabParallelEmbedding  # megatron's own F.embedding backward
    ddp = wrap_ddp(model, grid.pgs)
    assert one_rank_optimizer_shards(ddp)

    fused = []
    real_kernel = mcore_layers.fused_weight_gradient_mlp_cuda.wgrad_gemm_accum_fp32
    monkeypatch.setattr(mcore_layers.fused_weight_gradient_mlp_cuda, "wgrad_gemm_accum_fp32",
                        lambda *a: fused.append(1) or real_kernel(*a))
    scatters = []
    real = param_and_grad_buffer.dist_reduce_scatter_func
    monkeypatch.setattr(param_and_grad_buffer, "dist_reduce_scatter_func",
                        lambda *a, **k: scatters.append(1) or real(*a, **k))
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 40, (3, 12), generator=g)  # 36 tokens over 40 ids: repeated rows must add up
    ids[:, 0] = 7
    pos = torch.arange(12).expand(3, 12)
    weights = torch.randn(3, 12, args.vocab_size, generator=g)
    for step in range(2):  # the second step checks the in-place accumulation starts from a zeroed buffer
        ddp.zero_grad_buffer()
        (ddp(ids, pos, None) * weights).sum().backward()
        reduce_gradients(ddp, grid.pgs)
        want = torch.autograd.grad((reference(ids, pos, None) * weights).sum(), list(reference.parameters()))
        for (name, p), w in zip(model.named_parameters(), want):
            assert p.grad is None, name
            torch.testing.assert_close(p.main_grad, w, rtol=1e-5, atol=1e-6, msg=f"step {step}: {name}")
    assert not scatters  # one rank: the in-place all-reduce, not the buffer-copying reduce-scatter
    assert bool(fused) == fusion
    emb = model.embedding.word_embeddings.weight
    assert emb.main_grad[:40].abs().sum() > 0
    grid.close()


def test_main_grad_embedding_without_ddp_is_megatrons_path():
    """No ``main_grad`` (no DDP) or no gradient: the gradient lands in ``.grad`` as with megatron's embedding."""
    init_distributed("gloo")
    grid = build_model_grid(ParallelLayout(), "embedding-plain")
    ensure_megatron_runtime(grid.pgs)
    args = qwen3_args_from_hf(tiny_qwen3_config().to_dict())
    emb = build_qwen3_model(args, grid.pgs).embedding.word_embeddings
    ids = torch.tensor([[1, 2, 1, 5]])
    grad = torch.randn(1, 4, emb.weight.shape[1])
    emb(ids).backward(grad)
    want = torch.zeros_like(emb.weight).index_add_(0, ids[0], grad[0])
    torch.testing.assert_close(emb.weight.grad, want)
    with torch.no_grad():
        torch.testing.assert_close(emb(ids), emb.weight[ids])
    grid.close()

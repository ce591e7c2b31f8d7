"""Each CPU-path component of the trainer's step against the plain PyTorch computation it replaces, in one run.

    python benchmarks/step_components.py [--repeats 15] [--threads 2] [--only NAME ...] [--real-vocab]

Shapes are the TIDE-Cross reference point of `train_throughput.py` (student hidden 256, 8/4 heads of 32,
intermediate 768, V = 16,384, 4 x 256 tokens compacted to 416 per sequence, 53% of rows masked; MoE teacher
V = 20,480, 963 log-prob rows); ``--real-vocab`` adds the embedding gradient at Qwen3-0.6B's V = 151,936,
h = 1024, 8,192 tokens. Per component both sides first run once and must agree (the largest absolute
difference is printed); then they are timed interleaved (plain, ours, plain, ours...), so machine load hits
both alike, and the table gives each side's median, the ratio of the medians and the spread of the per-pair
ratios. These are the per-change figures of docs/PERFORMANCE.md; the whole step is `train_throughput.py`'s.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from a checkout

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from megatron.core.models.gpt.gpt_model import GPTModel  # noqa: E402,F401  (megatron import order)
from megatron.core.transformer.enums import AttnMaskType  # noqa: E402
from megatron.core.transformer.transformer_config import TransformerConfig  # noqa: E402

from tide_megatron.distributed import ParallelLayout, build_model_grid  # noqa: E402
from tide_megatron.distributed.cpu_compat import _CpuWgradAccumulation  # noqa: E402
from tide_megatron.distributed.init import init_distributed  # noqa: E402
from tide_megatron.distributed.vocab_parallel import head_logsumexp_and_target  # noqa: E402
from tide_megatron.losses.vocab_parallel import token_logprobs  # noqa: E402
from tide_megatron.models.attention import SDPACoreAttention, tile_bands  # noqa: E402
from tide_megatron.models.embedding import _EmbeddingIntoMainGrad  # noqa: E402
from tide_megatron.models.norms import _RMSNorm  # noqa: E402
from tide_megatron.training.compact import compact_student_inputs  # noqa: E402

# The reference point (train_throughput.py's TIDE-Cross defaults)
B, L, PROMPT, BLOCK, MASKED = 4, 256, 64, 32, 0.53
HIDDEN, HEADS, GROUPS, HEAD_DIM, FFN, VOCAB = 256, 8, 4, 32, 768, 16384
TEACHER_HIDDEN, TEACHER_VOCAB, TEACHER_ROWS = 256, 20480, 963
STUDENT_LAYERS = 4


@dataclass
class Component:
    """One A/B: ``plain()`` and ``ours()`` each do the whole job once and return what is compared."""

    name: str
    shape: str
    plain: Callable[[], tuple]
    ours: Callable[[], tuple]
    tolerance: float = 1e-4  # the largest absolute difference between the sides' results that still agrees


def _leaf(t: torch.Tensor) -> torch.Tensor:
    return t.detach().clone().requires_grad_()


def compacted_student_mask(gen: torch.Generator):
    """The compacted ``[xt ; x0]`` of a TIDE-Cross micro-batch: response tokens masked at the reference rate."""
    x0 = torch.randint(0, VOCAB, (B, L), generator=gen)
    masked = torch.rand(B, L, generator=gen) < MASKED
    masked[:, :PROMPT] = False
    xt = torch.where(masked, torch.full_like(x0, VOCAB - 1), x0)
    return compact_student_inputs(xt, x0, masked, BLOCK, pad_id=0)


def rms_norm(gen: torch.Generator, rows: int) -> Component:
    x, w = torch.randn(rows, HIDDEN, generator=gen), 1 + 0.1 * torch.randn(HIDDEN, generator=gen)
    g = torch.randn(rows, HIDDEN, generator=gen)

    def plain():
        xi, wi = _leaf(x), _leaf(w)
        h = xi.float()
        y = wi * (h * torch.rsqrt(h.square().mean(-1, keepdim=True) + 1e-6)).to(x.dtype)
        y.backward(g)
        return y.detach(), xi.grad, wi.grad

    def ours():
        xi, wi = _leaf(x), _leaf(w)
        y = _RMSNorm.apply(xi, wi, 1e-6)
        y.backward(g)
        return y.detach(), xi.grad, wi.grad

    return Component("rms_norm", f"[{rows}, {HIDDEN}], forward + backward", plain, ours)


def token_logprob_rows(gen: torch.Generator, rows: int) -> Component:
    z = torch.randn(rows, VOCAB, generator=gen) * 3
    t = torch.randint(0, VOCAB, (rows,), generator=gen)
    g = torch.randn(rows, generator=gen)

    def plain():
        zi = _leaf(z)
        out = torch.log_softmax(zi.float(), -1).gather(1, t[:, None])[:, 0]
        out.backward(g)
        return out.detach(), zi.grad

    def ours():
        zi = _leaf(z)
        out = token_logprobs(zi, t)
        out.backward(g)
        return out.detach(), zi.grad

    return Component("token_logprobs", f"[{rows}, {VOCAB}] logits, forward + backward", plain, ours)


def teacher_head(gen: torch.Generator) -> Component:
    h = torch.randn(TEACHER_ROWS, TEACHER_HIDDEN, generator=gen)
    w = torch.randn(TEACHER_VOCAB, TEACHER_HIDDEN, generator=gen) * TEACHER_HIDDEN ** -0.5
    t = torch.randint(0, TEACHER_VOCAB, (TEACHER_ROWS,), generator=gen)

    def plain():
        with torch.no_grad():
            z = h @ w.t()
            return torch.logsumexp(z, -1), z.gather(1, t[:, None])[:, 0]

    def ours():
        return head_logsumexp_and_target(h, w, None, t)

    return Component("teacher_head_logsumexp", f"[{TEACHER_ROWS}, {TEACHER_HIDDEN}] x [{TEACHER_VOCAB}, "
                     f"{TEACHER_HIDDEN}], no grad", plain, ours)


def band_attention(gen: torch.Generator, grid) -> Component:
    """One student attention layer on the compacted mask: the banded plan against one dense SDPA call. The plan
    is built once a forward and shared by every layer and the backward; its cost is timed apart."""
    spec = compacted_student_mask(gen).mask
    S = spec.seq_len
    cfg = TransformerConfig(num_layers=1, hidden_size=HIDDEN, num_attention_heads=HEADS, num_query_groups=GROUPS,
                            kv_channels=HEAD_DIM, attention_dropout=0.0, use_cpu_initialization=True)
    core = SDPACoreAttention(cfg, 1, AttnMaskType.arbitrary, "self", pg_collection=grid.pgs)
    qkv = [torch.randn(S, B, n, HEAD_DIM, generator=gen) for n in (HEADS, GROUPS, GROUPS)]
    g = torch.randn(S, B, HEADS * HEAD_DIM, generator=gen)
    dense = spec.blocked().clone()  # a plain tensor: SDPACoreAttention's one dense call
    plan_ms = []
    for _ in range(5):
        t0 = time.perf_counter()
        plan = tile_bands(dense)
        plan.all_columns
        plan_ms.append(1e3 * (time.perf_counter() - t0))

    def run(mask):
        q, k, v = (_leaf(t) for t in qkv)
        out = core(q, k, v, mask)
        out.backward(g)
        return out.detach(), q.grad, k.grad, v.grad

    return Component("band_attention", f"{S} tokens x {B}, {HEADS}/{GROUPS} heads of {HEAD_DIM}, "
                     f"{plan.live_fraction:.0%} of tiles live, forward + backward; the plan, built once a "
                     f"forward for all layers, {statistics.median(plan_ms):.1f} ms more", lambda: run(dense),
                     lambda: run(spec))


def embedding_grad(gen: torch.Generator, vocab: int, hidden: int, tokens: int) -> Component:
    w = torch.nn.Parameter(torch.randn(vocab, hidden, generator=gen) * 0.02)
    w.main_grad = torch.zeros_like(w)
    ids = torch.randint(0, vocab, (tokens,), generator=gen)
    g = torch.randn(tokens, hidden, generator=gen)

    def plain():  # megatron: F.embedding's dense weight gradient, added into main_grad by DDP's hook
        w.main_grad.zero_()
        w.grad = None
        F.embedding(ids, w).backward(g)
        w.main_grad.add_(w.grad)
        w.grad = None
        return (w.main_grad.clone(),) if vocab <= VOCAB else (w.main_grad[ids[:64]].clone(),)

    def ours():
        w.main_grad.zero_()
        _EmbeddingIntoMainGrad.apply(ids, w).backward(g)
        return (w.main_grad.clone(),) if vocab <= VOCAB else (w.main_grad[ids[:64]].clone(),)

    return Component(f"embedding_grad_v{vocab}", f"[{vocab}, {hidden}], {tokens} tokens, backward into main_grad",
                     plain, ours)


def wgrad_accumulation(gen: torch.Generator, rows: int) -> Component:
    x = torch.randn(rows, HIDDEN, generator=gen)
    go = torch.randn(rows, 2 * FFN, generator=gen)
    main_grad = torch.zeros(2 * FFN, HIDDEN)

    def plain():  # autograd's weight gradient, then DDP's hook adds it into main_grad
        main_grad.zero_()
        main_grad.add_(go.t() @ x)
        return (main_grad.clone(),)

    def ours():  # gradient_accumulation_fusion's kernel: straight into main_grad
        main_grad.zero_()
        _CpuWgradAccumulation.wgrad_gemm_accum_fp32(x, go, main_grad)
        return (main_grad.clone(),)

    return Component("wgrad_accumulation", f"fc1 [{2 * FFN}, {HIDDEN}] from {rows} rows", plain, ours)


def student_parameter_shapes() -> list[tuple[int, ...]]:
    """The student's parameters at the reference point (tied head): 7.3 M."""
    layer = [(HIDDEN,), ((HEADS + 2 * GROUPS) * HEAD_DIM, HIDDEN), (HEAD_DIM,), (HEAD_DIM,), (HIDDEN, HEADS * HEAD_DIM),
             (HIDDEN,), (2 * FFN, HIDDEN), (HIDDEN, FFN)]
    return [(VOCAB, HIDDEN)] + layer * STUDENT_LAYERS + [(HIDDEN,)]


def adamw(gen: torch.Generator) -> Component:
    shapes = student_parameter_shapes()
    start = [torch.randn(s, generator=gen) * 0.02 for s in shapes]
    grads = [torch.randn(s, generator=gen) * 1e-3 for s in shapes]

    def optimizer(**kind):  # each call of the returned step is one AdamW step on the same parameters and grads
        params = [torch.nn.Parameter(p.clone()) for p in start]
        for p, g in zip(params, grads):
            p.grad = g
        opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.1, **kind)

        def step():
            opt.step()
            return tuple(p.detach() for p in params[:3])
        return step

    n = sum(torch.Size(s).numel() for s in shapes)
    return Component("adamw", f"{n / 1e6:.1f} M fp32 parameters, one step (megatron's torch fallback: "
                     "single-tensor)", optimizer(foreach=False), optimizer(fused=True))


def one_rank_grad_reduce(gen: torch.Generator, grid) -> Component:
    n = sum(torch.Size(s).numel() for s in student_parameter_shapes())
    buf = torch.randn(n, generator=gen)
    group = grid.pgs.dp

    def plain():  # megatron's distributed optimizer: reduce-scatter into this rank's shard (here: all of it)
        with warnings.catch_warnings():  # torch calls the name megatron uses deprecated
            warnings.filterwarnings("ignore", message=".*reduce_scatter_tensor.*", category=FutureWarning)
            dist.reduce_scatter_tensor(buf[:n // group.size()], buf, group=group)
        return (buf[:8].clone(),)

    def ours():  # training/optimizer.reduce_gradients at one rank: all-reduce, in place
        dist.all_reduce(buf, group=group)
        return (buf[:8].clone(),)

    return Component("one_rank_grad_reduce", f"{n * 4 / 2 ** 20:.0f} MiB fp32 gradient buffer, gloo, 1 rank",
                     plain, ours)


def _seconds(fn: Callable[[], tuple]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def measure(c: Component, repeats: int) -> dict:
    """Agreement on the first call of each side, then ``repeats`` interleaved timed pairs (plain first)."""
    want, got = c.plain(), c.ours()
    diff = max(float((w.float() - o.float()).abs().max()) for w, o in zip(want, got))
    if not diff <= c.tolerance:  # timing two computations that differ would measure nothing
        raise SystemExit(f"step_components: {c.name}: ours and the plain computation differ by {diff:.3g} "
                         f"(more than {c.tolerance:g}); not timed")
    plain_s, ours_s = [], []
    for _ in range(repeats):
        plain_s.append(_seconds(c.plain))
        ours_s.append(_seconds(c.ours))
    ratios = sorted(o / p for p, o in zip(plain_s, ours_s))
    return {"name": c.name, "shape": c.shape, "plain_ms": 1e3 * statistics.median(plain_s),
            "ours_ms": 1e3 * statistics.median(ours_s), "ratio": statistics.median(ours_s) / statistics.median(plain_s),
            "ratio_lo": ratios[len(ratios) // 4], "ratio_hi": ratios[(3 * len(ratios)) // 4], "max_diff": diff}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=15, help="interleaved pairs per component (default 15)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (default 2, as train_throughput.py)")
    ap.add_argument("--only", nargs="*", default=None, help="component names to run (default: all)")
    ap.add_argument("--real-vocab", action="store_true",
                    help="also the embedding gradient at Qwen3-0.6B's V = 151,936, h = 1024, 8,192 tokens")
    a = ap.parse_args()
    if a.repeats < 3:
        ap.error("--repeats must be at least 3 (the spread needs quartiles)")
    torch.set_num_threads(a.threads)
    init_distributed("gloo")
    gen = torch.Generator().manual_seed(0)
    with build_model_grid(ParallelLayout(), "step-components") as grid:
        rows = compacted_student_mask(torch.Generator().manual_seed(0)).ids.numel()
        masked_rows = int(MASKED * B * (L - PROMPT))
        components = [rms_norm(gen, rows), token_logprob_rows(gen, masked_rows), teacher_head(gen),
                      band_attention(gen, grid), embedding_grad(gen, VOCAB, HIDDEN, rows), wgrad_accumulation(gen, rows), adamw(gen),
                      one_rank_grad_reduce(gen, grid)]
        if a.real_vocab:
            components.append(embedding_grad(gen, 151936, 1024, 8192))
        if a.only:
            unknown = set(a.only) - {c.name for c in components}
            if unknown:
                ap.error(f"--only: unknown component(s) {sorted(unknown)}; "
                         f"choose from {[c.name for c in components]}")
            components = [c for c in components if c.name in a.only]
        load = os.getloadavg()[0]
        print(f"step components, plain PyTorch vs ours: {a.threads} torch threads, {a.repeats} interleaved pairs "
              f"each, medians; load average {load:.1f} on {os.cpu_count()} CPUs at the start")
        print(f"  {'component':<24} {'plain ms':>9} {'ours ms':>9} {'ours/plain':>10} {'(quartiles)':>13} "
              f"{'max |diff|':>10}  what")
        for c in components:
            r = measure(c, a.repeats)
            print(f"  {r['name']:<24} {r['plain_ms']:9.2f} {r['ours_ms']:9.2f} {r['ratio']:10.2f} "
                  f"{r['ratio_lo']:6.2f}-{r['ratio_hi']:.2f} {r['max_diff']:10.1e}  {r['shape']}", flush=True)
        print(f"load average now {os.getloadavg()[0]:.1f}")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()

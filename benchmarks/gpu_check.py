"""GPU checks for the trainer (CUDA machines only; elsewhere it prints "no CUDA" and exits 0).

1. Transformer Engine layer spec vs the local spec: student logits parity (same HF weights, same
   block-diffusion mask and duplicated positions), bf16.
2. Student optimizer-step time, FP8 (TE delayed-scaling recipe) vs bf16, with MFU.
3. One teacher forward (LLaDA2-architecture MoE through the teacher engine, token log-prob payload).

    python benchmarks/gpu_check.py [--hidden 1024 --layers 8 --seq 512 --batch 8 --steps 5]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# Dense bf16 tensor-core peaks (TFLOP/s) for MFU; FP8 doubles them on Hopper.
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "B200": 2250.0}


def _peak_tflops(name: str) -> float:
    for key, value in PEAK_BF16_TFLOPS.items():
        if key in name:
            return value
    return float("nan")


def _student_flops(args, params_non_embedding: int) -> float:
    """6 x N x tokens for the trunk over [xt ; x0] (2L tokens), the LM head over the xt half, attention."""
    tokens = args.batch * 2 * args.seq
    attn = 12 * args.layers * args.hidden * (2 * args.seq) * tokens  # QK^T and AV, fwd+bwd, full 2L window
    head = 6 * args.hidden * args.vocab * args.batch * args.seq
    return 6 * params_non_embedding * tokens + attn + head


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--kv-heads", type=int, default=8)
    ap.add_argument("--vocab", type=int, default=151936)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=5)
    args = ap.parse_args()

    import torch

    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device on this machine; nothing to check (exit 0)")
        return 0
    from tide_megatron.models.backend import transformer_engine_available

    os.environ.setdefault("NVTE_FLASH_ATTN", "1")
    from tide_megatron.distributed import build_model_grid, init_distributed, ParallelLayout, seed_model_parallel_rng
    from tide_megatron.diffusion.inputs import bd3lm_inputs
    from tide_megatron.diffusion.masks import block_diffusion_mask
    from tide_megatron.models.convert.weights import load_hf_weights
    from tide_megatron.models.safetensors_reader import SafetensorsReader
    from tide_megatron.models.qwen3 import build_qwen3_model, qwen3_args_from_hf
    from tide_megatron.models.qwen3.convert import qwen3_mapping
    from tide_megatron.models.qwen3.tiny import save_tiny_qwen3

    init_distributed()
    grid = build_model_grid(ParallelLayout(), "gpu_check")
    seed_model_parallel_rng(0)
    from tide_megatron.models.gpt import ensure_global_memory_buffer

    ensure_global_memory_buffer()
    name = torch.cuda.get_device_name()
    te = transformer_engine_available()
    print(f"gpu_check on {name}; Transformer Engine: {'yes' if te else 'no'}")
    work = Path(tempfile.mkdtemp(prefix="tide-gpu-check-"))
    hf_dir = work / "student"
    save_tiny_qwen3(str(hf_dir), seed=0, vocab_size=args.vocab, hidden_size=args.hidden,
                    intermediate_size=3 * args.hidden, num_hidden_layers=args.layers, num_attention_heads=args.heads,
                    num_key_value_heads=args.kv_heads, head_dim=args.hidden // args.heads,
                    max_position_embeddings=4096, rope_theta=1e6)
    L = args.seq
    g = torch.Generator().manual_seed(0)
    x0 = torch.randint(0, args.vocab, (args.batch, L), generator=g)
    xt = torch.where(torch.rand(args.batch, L, generator=g) < 0.5, args.vocab - 1, x0)
    ids, pos = (t.cuda() for t in bd3lm_inputs(xt, x0))
    mask = block_diffusion_mask(L, 32, device="cuda")

    def build(backend: str, fp8: bool = False):
        extra = {}
        if fp8:
            extra = dict(fp8="hybrid", fp8_recipe="delayed", fp8_amax_history_len=1024, fp8_amax_compute_algo="max")
        margs = qwen3_args_from_hf(str(hf_dir), params_dtype=torch.bfloat16, perform_initialization=False,
                                   use_cpu_initialization=False, **extra)
        model = build_qwen3_model(margs, grid.pgs, backend=backend).cuda()
        load_hf_weights(model, SafetensorsReader(str(hf_dir)), qwen3_mapping(margs))
        return model, margs

    # 1. TE vs local spec logits parity.
    local, margs = build("local")
    with torch.no_grad():
        ref = local(ids, pos, mask, logits_rows=slice(0, L)).float()
    n_params = sum(p.numel() for p in local.parameters())
    n_embed = args.vocab * args.hidden
    del local
    if te:
        te_model, _ = build("te")
        with torch.no_grad():
            out = te_model(ids, pos, mask, logits_rows=slice(0, L)).float()
        diff = (out - ref).abs().max().item()
        rel = diff / ref.abs().max().item()
        print(f"[1] TE spec vs local spec logits (bf16): max |diff| {diff:.4e} (relative {rel:.2e}) "
              f"-> {'OK' if rel < 2e-2 else 'MISMATCH'}")
        del te_model
    else:
        print("[1] TE spec vs local spec: skipped (Transformer Engine not installed)")

    # 2. Student step time, bf16 vs FP8, and MFU.
    flops = _student_flops(args, n_params - n_embed)
    peak = _peak_tflops(name)
    variants = [("bf16", "te" if te else "local", False)]
    if te and torch.cuda.get_device_capability() >= (8, 9):
        variants.append(("fp8", "te", True))
    results = {}
    for label, backend, fp8 in variants:
        model, _ = build(backend, fp8)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
        ctx = __import__("contextlib").nullcontext()
        if fp8:
            import transformer_engine.pytorch as tep
            from transformer_engine.common.recipe import DelayedScaling, Format

            ctx_fn = lambda: tep.fp8_autocast(enabled=True, fp8_recipe=DelayedScaling(fp8_format=Format.HYBRID))  # noqa: E731
        else:
            ctx_fn = lambda: ctx  # noqa: E731
        times = []
        for i in range(args.steps + 1):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            with ctx_fn():
                logits = model(ids, pos, mask, logits_rows=slice(0, L))
            loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), x0.cuda().flatten())
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            torch.cuda.synchronize()
            if i:
                times.append(time.perf_counter() - t0)
        step = sum(times) / len(times)
        results[label] = step
        mfu = flops / step / (peak * 1e12) if peak == peak else float("nan")
        print(f"[2] student step {label:<5} ({backend} spec): {step * 1e3:8.1f} ms, "
              f"{args.batch * L / step:9.0f} student tok/s, {flops / step / 1e12:7.1f} TFLOP/s, MFU {mfu:6.1%} "
              f"(bf16 peak {peak:g} TFLOP/s), peak mem {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")
        del model, opt
        torch.cuda.reset_peak_memory_stats()
    if "fp8" in results:
        print(f"    FP8 / bf16 step time: {results['fp8'] / results['bf16']:.2f}x")
    else:
        print("    FP8: skipped (needs Transformer Engine and compute capability >= 8.9)")

    # 3. One teacher forward through the engine (LLaDA2-architecture MoE, bf16).
    from tide_megatron.demo.pretrain_teacher import TinyLLaDA2Shape, write_random_llada2_hf
    from tide_megatron.models.llada2 import load_llada2_teacher
    from tide_megatron.teacher import TeacherEngine

    tshape = TinyLLaDA2Shape(hidden_size=args.hidden, intermediate_size=4 * args.hidden,
                             num_hidden_layers=max(2, args.layers // 2), num_attention_heads=args.heads,
                             num_key_value_heads=args.kv_heads, head_dim=args.hidden // args.heads, num_experts=16,
                             num_experts_per_tok=4, n_group=4, topk_group=2, moe_intermediate_size=args.hidden // 2)
    tdir = write_random_llada2_hf(work / "teacher", tshape, args.vocab, mask_id=args.vocab - 1,
                                  pad_id=args.vocab - 2, eos_id=args.vocab - 2, seed=1)
    tmodel, lcfg = load_llada2_teacher(tdir, grid.pgs, params_dtype=torch.bfloat16)
    tmodel = tmodel.cuda()
    engine = TeacherEngine(tmodel, grid.pgs, pad_token_id=args.vocab - 2)
    t_ids = torch.randint(0, args.vocab - 8, (args.batch, 2 * L), device="cuda")
    for i in range(3):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        logp = engine.token_logprobs(t_ids, t_ids)
        torch.cuda.synchronize()
        dt = time.perf_counter() - t0
    print(f"[3] teacher forward (MoE {lcfg.num_hidden_layers} layers, {lcfg.num_experts} experts top-"
          f"{lcfg.num_experts_per_tok}, {args.batch} x {2 * L} tokens, token log-prob payload): {dt * 1e3:.1f} ms, "
          f"{args.batch * 2 * L / dt:.0f} teacher tok/s; payload finite: {bool(torch.isfinite(logp).all())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Student forward+backward with the BD3LM CE: output layer on the xt half only (`logits_rows`) against
full [xt ; x0] logits sliced afterwards (spec §1.4, §9.21). Prints time, tokens/s, peak memory, ratios.

    python benchmarks/student_logits_rows.py                       # CPU defaults (small)
    python benchmarks/student_logits_rows.py --vocab 151936 --hidden 1024 --layers 28 --seq 512 --batch 8

Peak memory: CUDA's allocator peak on GPU; on CPU the process's peak resident set (VmHWM, reset via
/proc/self/clear_refs before each variant) minus the resident set before it.
"""

from __future__ import annotations

import argparse
import time

import torch

from tide_megatron.diffusion import bd3lm_inputs, block_diffusion_mask, mask_tokens, sample_t
from tide_megatron.distributed import ParallelLayout, build_model_grid, init_distributed
from tide_megatron.losses.ce import bd3lm_ce
from tide_megatron.models.qwen3 import build_qwen3_model, qwen3_args_from_hf
from tide_megatron.models.qwen3.tiny import tiny_qwen3_config


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(field)


def _reset_peak(device: torch.device) -> int:
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated()
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # resets VmHWM to the current resident set
    return _status_kib("VmRSS") * 1024


def _peak(device: torch.device) -> int:
    if device.type == "cuda":
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated()
    return _status_kib("VmHWM") * 1024


def step(model, batch, L: int, mask: torch.Tensor, rows_only: bool) -> float:
    ids, pos, x0, masked, t = batch
    if rows_only:
        logits = model(ids, pos, mask, logits_rows=slice(0, L))
    else:
        logits = model(ids, pos, mask)[:, :L]
    loss = bd3lm_ce(logits, x0, masked, torch.ones_like(masked), t)
    loss.backward()
    model.zero_grad(set_to_none=True)
    return loss.item()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--vocab", type=int, default=32768)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--seq", type=int, default=256, help="L: the student length (inputs are 2L)")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--block", type=int, default=32)
    p.add_argument("--iters", type=int, default=3)
    a = p.parse_args()
    init_distributed()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    heads = max(2, a.hidden // 64)
    cfg = tiny_qwen3_config(vocab_size=a.vocab, hidden_size=a.hidden, intermediate_size=3 * a.hidden,
                            num_hidden_layers=a.layers, num_attention_heads=heads,
                            num_key_value_heads=max(1, heads // 2), head_dim=64)
    args = qwen3_args_from_hf(cfg.to_dict(), params_dtype=dtype)
    model = build_qwen3_model(args, build_model_grid(ParallelLayout(), "bench").pgs).to(device)

    g = torch.Generator().manual_seed(0)
    x0 = torch.randint(0, a.vocab, (a.batch, a.seq), generator=g)
    t = sample_t(a.batch, generator=g)
    xt, masked = mask_tokens(x0, x0, t, a.vocab - 1, generator=g)
    ids, pos = bd3lm_inputs(xt, x0)
    batch = tuple(x.to(device) for x in (ids, pos, x0, masked, t))
    mask = block_diffusion_mask(a.seq, a.block, device=device)

    results = {}
    for name, rows_only in (("full logits, sliced (baseline)", False), ("xt rows only", True)):
        step(model, batch, a.seq, mask, rows_only)  # warm-up
        base = _reset_peak(device)
        start = time.perf_counter()
        for _ in range(a.iters):
            loss = step(model, batch, a.seq, mask, rows_only)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = (time.perf_counter() - start) / a.iters
        peak_mib = (_peak(device) - base) / 2**20
        results[name] = (seconds, peak_mib)
        print(f"{name:32s} {seconds * 1e3:9.1f} ms/step  {a.batch * a.seq / seconds:10.0f} student tokens/s  "
              f"peak +{peak_mib:8.1f} MiB  loss {loss:.4f}")
    (t0, m0), (t1, m1) = results.values()
    print(f"ratio xt-rows / baseline: time {t1 / t0:.3f}, peak memory {m1 / max(m0, 1e-9):.3f}  "
          f"(V={a.vocab}, h={a.hidden}, layers={a.layers}, b={a.batch}, L={a.seq}, {dtype}, {device.type})")


if __name__ == "__main__":
    main()

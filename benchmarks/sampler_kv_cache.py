"""BD3LM sampler throughput: prefix KV cache vs re-encoding the prefix, for the transformers and the
megatron-core student, measured in one run on the same tiny random Qwen3 (tokens/s, peak memory).

Usage: python benchmarks/sampler_kv_cache.py [--prompt-len 256 --new-tokens 64 --batch 2 --layers 4]
"""

from __future__ import annotations

import argparse
import os
import tempfile

import torch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--prompt-len", type=int, default=256)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--block-size", type=int, default=32)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--vocab", type=int, default=8192)
    args = p.parse_args()

    from tide_megatron.cli.convert import main as tide_convert
    from tide_megatron.diffusion.sampler import SamplerConfig
    from tide_megatron.eval.generation import measure_generation
    from tide_megatron.eval.models import HFDenoiser, RecomputeDenoiser, load_mcore_student
    from tide_megatron.models.convert.reference import load_hf_reference
    from tide_megatron.models.qwen3.tiny import save_tiny_qwen3

    tmp = tempfile.mkdtemp(prefix="tide-bench-")
    hf_dir, mc_dir = os.path.join(tmp, "hf"), os.path.join(tmp, "mcore")
    save_tiny_qwen3(hf_dir, vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=3 * args.hidden,
                    num_hidden_layers=args.layers, num_attention_heads=8, num_key_value_heads=4,
                    head_dim=args.hidden // 8, max_position_embeddings=4096)
    assert tide_convert(["hf-to-mcore", "--hf-dir", hf_dir, "--mcore-dir", mc_dir]) == 0
    hf = HFDenoiser(load_hf_reference(hf_dir))
    mc = load_mcore_student(mc_dir)
    gen = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, args.vocab - 3, (args.prompt_len,), generator=gen).tolist() for _ in range(args.batch)]
    cfg = SamplerConfig(mask_id=args.vocab - 1, pad_id=args.vocab - 2, eos_id=args.vocab - 3,
                        block_size=args.block_size, max_new_tokens=args.new_tokens, steps=args.new_tokens)
    slots = -(-args.prompt_len // args.block_size) * args.block_size + args.new_tokens
    runs = {
        "transformers, recompute prefix (baseline)": RecomputeDenoiser(hf.full_forward),
        "transformers, DynamicCache": hf,
        "megatron-core, recompute prefix": mc.denoiser(),
        "megatron-core, StaticInferenceContext": mc.denoiser(max_sequence_length=slots),
    }
    print(f"prompt {args.prompt_len} + {args.new_tokens} new tokens, batch {args.batch}, block {args.block_size}, "
          f"{args.new_tokens} steps, {args.layers} layers x hidden {args.hidden}, vocab {args.vocab}, "
          f"device {'cuda' if torch.cuda.is_available() else 'cpu'}, threads {torch.get_num_threads()}")
    base = None
    for name, model in runs.items():
        rep = measure_generation(model, prompts, cfg, batch_size=args.batch)
        base = base or rep.tokens_per_s
        print(f"{name:45s} {rep.tokens_per_s:9.1f} tokens/s  {rep.seconds:7.2f} s  x{rep.tokens_per_s / base:5.2f}  "
              f"peak {rep.peak_memory_bytes / 2**30:.2f} GiB ({rep.peak_memory_kind})")


if __name__ == "__main__":
    main()

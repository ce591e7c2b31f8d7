"""Build the artifacts the tiny CPU configs in examples/tiny/ read, under ${TIDE_CACHE_DIR}/tiny-distill/.

Real tokenizers and real text, tiny random models:
  - student:    Qwen3 BD3LM, hidden 64, 2 layers, the Mistral v1 SentencePiece vocabulary (32,000 + <|mask|>);
  - teacher_a:  LLaDA2-architecture MoE (pipeline A), hidden 64, 2 layers, 4 experts top-2 + 1 shared,
                GPT-2's BPE (50,257 + mask): a different tokenizer, so chunk alignment;
  - teacher_b:  the Qwen3 (WeDLM) layout (pipeline B), hidden 96, 2 layers, sharing the student's tokenizer;
  - data_a, data_b (+ _valid): Python standard-library conversations through tide-preprocess
                (--align chunks / pairs).
Idempotent: existing outputs are kept.

    python tools/make_tiny_distill.py [--train 256 --valid 32]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

STUDENT_TOKENIZER, TEACHER_A_TOKENIZER = "mistral-v1", "gpt-2"
SEQ_LEN = 128


def _round_up(n: int, m: int = 64) -> int:
    return -(-n // m) * m


def _write_qwen3(path: Path, hidden: int, layers: int, vocab: int, seed: int, **ids: int) -> None:
    """A random transformers Qwen3 (4 q / 2 kv heads, tied head) with the given special-token ids."""
    from tide_megatron.models.qwen3.tiny import save_tiny_qwen3

    save_tiny_qwen3(str(path), seed=seed, vocab_size=vocab, hidden_size=hidden, intermediate_size=3 * hidden,
                    num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2, head_dim=hidden // 4,
                    max_position_embeddings=4096, rope_theta=1e6, **ids)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--train", type=int, default=256, help="training conversations")
    ap.add_argument("--valid", type=int, default=32, help="held-out conversations")
    args = ap.parse_args()

    from tide_megatron.fixtures.artifacts import cache_dir
    from tide_megatron.align.tokenizers import load_tokenizer
    from tide_megatron.data.corpus import CorpusSpec, write_jsonl
    from tide_megatron.data.preprocess import preprocess
    from tide_megatron.data.samples import SampleConfig
    from tide_megatron.demo.pretrain_teacher import TinyLLaDA2Shape, write_random_llada2_hf

    root = cache_dir() / "tiny-distill"
    root.mkdir(parents=True, exist_ok=True)
    student_tok, teacher_tok = load_tokenizer(STUDENT_TOKENIZER), load_tokenizer(TEACHER_A_TOKENIZER)
    s_vocab, t_vocab = _round_up(len(student_tok)), _round_up(len(teacher_tok))
    if not (root / "student").exists():
        _write_qwen3(root / "student", hidden=64, layers=2, vocab=s_vocab, seed=1, mask_token_id=student_tok.mask_id)
    if not (root / "teacher_b").exists():
        _write_qwen3(root / "teacher_b", hidden=96, layers=2, vocab=s_vocab, seed=2, mask_token_id=student_tok.mask_id,
                     pad_token_id=student_tok.pad_id, eos_token_id=student_tok.eos_id)
    if not (root / "teacher_a").exists():
        shape = TinyLLaDA2Shape(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                num_key_value_heads=2, head_dim=16, num_experts=4, num_experts_per_tok=2, n_group=2,
                                topk_group=1, moe_intermediate_size=32, first_k_dense_replace=1)
        write_random_llada2_hf(root / "teacher_a", shape, t_vocab, mask_id=teacher_tok.mask_id,
                               pad_id=teacher_tok.pad_id, eos_id=teacher_tok.eos_id, seed=3)
    spec = CorpusSpec(prompt_lines=3, response_lines=4, max_response_chars=240)
    for split, n in (("train", args.train), ("heldout", args.valid)):
        jsonl = root / f"stdlib_{split}.jsonl"
        if not jsonl.exists():
            write_jsonl(jsonl, split, n, spec)
        for pipe, teacher, align, tmax in (("a", TEACHER_A_TOKENIZER, "chunks", 1024),
                                           ("b", STUDENT_TOKENIZER, "pairs", 768)):
            out = root / f"data_{pipe}{'' if split == 'train' else '_valid'}"
            if out.exists():
                continue
            cfg = SampleConfig(student_tokenizer=STUDENT_TOKENIZER, teacher_tokenizer=teacher,
                               student_template="qwen3", teacher_template="llada2" if pipe == "a" else "wedlm",
                               student_max_len=SEQ_LEN, teacher_max_len=tmax, align=align)
            summary = preprocess([str(jsonl)], out, cfg, workers=1, progress=False)
            print(f"{out.name}: kept {summary.kept}")
    print(json.dumps({"root": str(root), "student_vocab": s_vocab, "teacher_a_vocab": t_vocab}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

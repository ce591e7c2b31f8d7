"""Alignment coverage and preprocessing throughput on real stdlib snippets for real tokenizer pairs.

Prints, per (student, teacher) pair: the fraction of content bytes inside kept chunks (all messages and the
assistant response alone), the chunk-shape histogram (teacher tokens : student tokens), the train-time stage's
time per batch (with CompDemo against without), and tide-preprocess throughput in samples/s per worker for
1 worker (baseline) and N workers, measured in the same run.

    python benchmarks/alignment_report.py --samples 200 --workers 2
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections import Counter
from pathlib import Path

from tide_megatron.align.alignment import align_chunks
from tide_megatron.align.templates import render_conversation, resolve_template
from tide_megatron.align.tokenizers import load_tokenizer
from tide_megatron.data.indexed import TideAlignedDataset
from tide_megatron.data.preprocess import preprocess
from tide_megatron.data.samples import SampleConfig
from tide_megatron.data.stage import StageConfig, TideCollator
from tide_megatron.data.stdlib_snippets import stdlib_snippets

DEFAULT_PAIRS = ["qwen2:llama-spm", "mistral-v1:gpt-2", "qwen2:bert-bge", "llama-bpe:qwen2"]


def coverage(student: str, teacher: str, conversations: list[dict]) -> dict:
    S, T = load_tokenizer(student), load_tokenizer(teacher)
    s_tpl, t_tpl = resolve_template("qwen3", S, "qwen3"), resolve_template("llada2", T, "llada2")
    total = covered = resp_total = resp_covered = 0
    shapes: Counter = Counter()
    sizes: Counter = Counter()
    n_chunks = 0
    for conv in conversations:
        msgs = conv["messages"]
        sc, tc = render_conversation(S, s_tpl, msgs), render_conversation(T, t_tpl, msgs)
        chunks = align_chunks(T, tc, S, sc)
        n_chunks += len(chunks)
        for c in chunks:
            nt, ns = c.t_end - c.t_start, c.s_end - c.s_start
            shapes[f"{min(nt, 4)}{'+' if nt > 4 else ''}:{min(ns, 4)}{'+' if ns > 4 else ''}"] += 1
            nbytes = len(sc.text[sc.offsets[c.s_start][0] : sc.offsets[c.s_end - 1][1]].encode("utf-8"))
            sizes[min(nbytes, 16)] += 1
        for k, span in enumerate(sc.content_spans):
            if span is None:
                continue
            a, b = span
            content = len(sc.text[a:b].encode("utf-8"))
            inside, prev = 0, a
            for c in chunks:
                s0, s1 = sc.offsets[c.s_start][0], sc.offsets[c.s_end - 1][1]
                if a <= s0 and s1 <= b:
                    inside += len(sc.text[max(s0, prev) : s1].encode("utf-8"))
                    prev = max(prev, s1)
            total += content
            covered += inside
            if k == len(msgs) - 1:
                resp_total += content
                resp_covered += inside
    return {"coverage": covered / total, "response_coverage": resp_covered / resp_total, "chunks": n_chunks,
            "shapes": dict(shapes.most_common()), "bytes_per_chunk": dict(sorted(sizes.items()))}


def throughput(student: str, teacher: str, src: Path, n: int, workers: int) -> float:
    config = SampleConfig(student_tokenizer=student, teacher_tokenizer=teacher, student_template="qwen3",
                          teacher_template="llada2")
    with tempfile.TemporaryDirectory() as tmp:
        preprocess([src], Path(tmp) / "warm", config, workers=1, progress=False)  # tokenizer load + conversion
        start = time.perf_counter()
        summary = preprocess([src], Path(tmp) / "ds", config, workers=workers, progress=False)
        elapsed = time.perf_counter() - start
    assert summary.kept + sum(summary.dropped.values()) == n
    return n / elapsed


def stage_time(student: str, teacher: str, src: Path, batch_size: int = 8) -> tuple[float, float]:
    """Seconds per batch of the train-time collator (collation, noising, chunk masking), with and without CompDemo."""
    config = SampleConfig(student_tokenizer=student, teacher_tokenizer=teacher, student_template="qwen3",
                          teacher_template="llada2")
    with tempfile.TemporaryDirectory() as tmp:
        preprocess([src], Path(tmp) / "ds", config, workers=1, progress=False)
        ds = TideAlignedDataset(Path(tmp) / "ds")
        items = [ds[i] for i in range(len(ds))]
        out = []
        for ratio in (None, 0.5):
            collate = TideCollator(StageConfig.from_meta(ds.meta, compdemo_ratio=ratio), seed=0)
            start = time.perf_counter()
            n = 0
            for i in range(0, len(items) - batch_size + 1, batch_size):
                collate(items[i : i + batch_size])
                n += 1
            out.append((time.perf_counter() - start) / n)
    return out[0], out[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--samples", type=int, default=200)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--pairs", nargs="+", default=DEFAULT_PAIRS, help="student:teacher tokenizer specs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeat", type=int, default=5,
                   help="throughput input = the snippets repeated this many times (pool start-up amortized)")
    args = p.parse_args()

    conversations = stdlib_snippets(args.samples, seed=args.seed)
    kinds = Counter(c["kind"] for c in conversations)
    print(f"{len(conversations)} stdlib conversations ({kinds['code']} code, {kinds['prose']} prose)")
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "corpus.jsonl"
        src.write_text("\n".join(json.dumps({"messages": c["messages"]}) for c in conversations))
        big = Path(tmp) / "repeated.jsonl"
        big.write_text("\n".join([src.read_text()] * args.repeat))
        n_big = len(conversations) * args.repeat
        for pair in args.pairs:
            student, teacher = pair.split(":")
            cov = coverage(student, teacher, conversations)
            base = throughput(student, teacher, big, n_big, 1)
            par = throughput(student, teacher, big, n_big, args.workers) if args.workers > 1 else base
            print(f"\n== student {student} / teacher {teacher}")
            print(f"  coverage: {cov['coverage']:.4f} of content bytes in kept chunks "
                  f"({cov['response_coverage']:.4f} of assistant-response bytes), {cov['chunks']} chunks")
            print("  chunk shapes (teacher:student tokens): "
                  + ", ".join(f"{k} {v / cov['chunks']:.3f}" for k, v in cov["shapes"].items()))
            print("  bytes per chunk (16 = 16+): "
                  + ", ".join(f"{k}:{v}" for k, v in cov["bytes_per_chunk"].items()))
            plain, demo = stage_time(student, teacher, src)
            print(f"  train-time stage (batch 8, student 512, teacher <= 1024): {plain * 1e3:.1f} ms/batch, "
                  f"with CompDemo passes {demo * 1e3:.1f} ms/batch ({demo / plain:.2f}x)")
            print(f"  preprocessing {n_big} samples: 1 worker {base:.1f} samples/s; {args.workers} workers {par:.1f} samples/s = "
                  f"{par / args.workers:.1f} samples/s per worker ({par / base:.2f}x the 1-worker baseline)")


if __name__ == "__main__":
    main()

"""Tiny distillation set-ups for the trainer's tests and benchmarks: random HF checkpoints + aligned samples.

Checkpoints are real HF layouts (transformers' Qwen3 for the student and the dense teacher, the LLaDA2
reference writer for the MoE teacher) that the production loaders read. Samples are conversations over a
small "character" alphabet tokenised two ways: the student splits the text into 1-2 character tokens, the
MoE teacher into 1-3 character tokens, so chunks are the minimal spans where both tokenisations share a
boundary (spec §5.2); the dense teacher shares the student's tokeniser and differs only in its template
length (pairs of §2.4). Content follows a fixed random bigram chain, so a student can learn it.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Optional

import torch

STUDENT_VOCAB = 128
STUDENT_IDS = dict(student_mask=127, student_eos=126, student_pad=125)
DENSE_TEACHER_IDS = dict(mask_token_id=127, pad_token_id=125, eos_token_id=126)  # shares the student's tokeniser
MOE_TEACHER = dict(vocab_size=160, pad_token_id=158, mask_token_id=157, eos_token_id=159)
ALPHABET = 12


def write_qwen3(directory: Path, hidden: int, layers: int, heads: int, kv_heads: int, vocab: int, seed: int,
                extra: Optional[dict] = None, intermediate: Optional[int] = None) -> Path:
    """A random transformers Qwen3ForCausalLM saved in the HF layout (config.json + safetensors)."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(seed)
    cfg = Qwen3Config(vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate or 3 * hidden,
                      num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                      head_dim=hidden // heads, max_position_embeddings=4096, tie_word_embeddings=True,
                      rope_theta=1e6, **(extra or {}))
    model = Qwen3ForCausalLM(cfg)
    model.save_pretrained(str(directory), safe_serialization=True)
    if extra:
        raw = json.loads((directory / "config.json").read_text())
        raw.update(extra)
        (directory / "config.json").write_text(json.dumps(raw, indent=2))
    return directory


def write_student(directory: Path, hidden: int = 32, layers: int = 2, heads: int = 4, kv_heads: int = 2,
                  vocab: int = STUDENT_VOCAB, seed: int = 1) -> Path:
    return write_qwen3(directory, hidden, layers, heads, kv_heads, vocab, seed)


def write_dense_teacher(directory: Path, hidden: int = 48, layers: int = 2, heads: int = 4, kv_heads: int = 2,
                        vocab: int = STUDENT_VOCAB, seed: int = 2) -> Path:
    """The pipeline-B teacher: the Qwen3 layout (WeDLM's), sharing the student's tokeniser."""
    return write_qwen3(directory, hidden, layers, heads, kv_heads, vocab, seed, extra=dict(DENSE_TEACHER_IDS))


def write_moe_teacher(directory: Path, seed: int = 3, **overrides) -> Path:
    """The pipeline-A teacher: an LLaDA2-architecture MoE in the released HF layout."""
    from tests.reference.llada2_checkpoint import write_tiny_llada2

    sizes = dict(vocab_size=MOE_TEACHER["vocab_size"], hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, head_dim=8, num_experts=4, num_experts_per_tok=2,
                 n_group=2, topk_group=1, moe_intermediate_size=16, first_k_dense_replace=1,
                 pad_token_id=MOE_TEACHER["pad_token_id"], mask_token_id=MOE_TEACHER["mask_token_id"])
    sizes.update(overrides)
    write_tiny_llada2(directory, seed=seed, num_shards=1, config_overrides={"eos_token_id": MOE_TEACHER["eos_token_id"]},
                      **sizes)
    return directory


def write_checkpoints(root: Path) -> Path:
    """The three tiny checkpoints the trainer tests read: ``student``, ``dense`` (pipeline B's teacher, tied
    embeddings) and ``moe`` (pipeline A's)."""
    write_student(root / "student")
    write_dense_teacher(root / "dense")
    write_moe_teacher(root / "moe")
    return root


def _split(text: list[int], rng: random.Random, max_len: int) -> list[list[int]]:
    out, i = [], 0
    while i < len(text):
        n = rng.randint(1, max_len)
        out.append(text[i:i + n])
        i += n
    return out


def _token_id(piece: list[int], vocab: int, salt: int) -> int:
    value = salt
    for c in piece:
        value = value * 31 + c + 1
    return value % vocab


def _chunks(s_pieces: list[list[int]], t_pieces: list[list[int]]) -> tuple[list[int], list[int]]:
    """Per-token chunk ids: minimal spans whose cumulative character counts agree on both sides (§5.2)."""
    s_chunk, t_chunk = [-1] * len(s_pieces), [-1] * len(t_pieces)
    i = j = 0
    si = sj = 0
    ls = lt = 0
    c = 0
    while i < len(s_pieces) and j < len(t_pieces):
        if ls + len(s_pieces[i]) == lt + len(t_pieces[j]):
            ls += len(s_pieces[i])
            lt += len(t_pieces[j])
            for k in range(si, i + 1):
                s_chunk[k] = c
            for k in range(sj, j + 1):
                t_chunk[k] = c
            c += 1
            i, j = i + 1, j + 1
            si, sj = i, j
        elif ls + len(s_pieces[i]) < lt + len(t_pieces[j]):
            ls += len(s_pieces[i])
            i += 1
        else:
            lt += len(t_pieces[j])
            j += 1
    return s_chunk, t_chunk


def _spans(s_chunk: list[int], t_chunk: list[int]) -> torch.Tensor:
    """Per-token chunk ids -> ``[n, 4]`` rows (t_start, t_end, s_start, s_end), the dataset's chunk format."""
    rows = []
    for c in range(max(s_chunk + [-1]) + 1):
        s_pos = [i for i, x in enumerate(s_chunk) if x == c]
        t_pos = [i for i, x in enumerate(t_chunk) if x == c]
        rows.append([t_pos[0], t_pos[-1] + 1, s_pos[0], s_pos[-1] + 1])
    return torch.tensor(rows, dtype=torch.int64).view(-1, 4)


def dataset_meta(pipeline: str, seq_length: int, teacher_max_len: int = 1024) -> dict:
    """``meta.json`` of a tide-preprocess dataset for these tiny tokenisations."""
    dense = pipeline == "B"
    teacher = (dict(vocab_size=STUDENT_VOCAB, mask_id=DENSE_TEACHER_IDS["mask_token_id"],
                    eos_id=DENSE_TEACHER_IDS["eos_token_id"], pad_id=DENSE_TEACHER_IDS["pad_token_id"]) if dense else
               dict(vocab_size=MOE_TEACHER["vocab_size"], mask_id=MOE_TEACHER["mask_token_id"],
                    eos_id=MOE_TEACHER["eos_token_id"], pad_id=MOE_TEACHER["pad_token_id"]))
    return {"format": "tide-aligned-v1",
            "config": {"align": "pairs" if dense else "chunks", "student_max_len": seq_length,
                       "teacher_max_len": teacher_max_len, "student_tokenizer": "tiny-student",
                       "teacher_tokenizer": "tiny-student" if dense else "tiny-teacher"},
            "student": dict(vocab_size=STUDENT_VOCAB, mask_id=STUDENT_IDS["student_mask"],
                            eos_id=STUDENT_IDS["student_eos"], pad_id=STUDENT_IDS["student_pad"]),
            "teacher": teacher}


def make_dataset(n: int, pipeline: str, seq_length: int = 48, seed: int = 0, **kw):
    from tide_megatron.training.data import ListDataset

    return ListDataset(make_samples(n, pipeline, seed, **kw), dataset_meta(pipeline, seq_length))


def write_dataset(out: Path, n: int, pipeline: str, seq_length: int = 48, seed: int = 0):
    """The samples of `make_samples` as a tide-preprocess dataset directory (what tide-train reads); opened."""
    import numpy as np

    from tide_megatron.data.indexed import DatasetWriter, TideAlignedDataset

    align = "chunks" if pipeline == "A" else "pairs"
    fields = ("student_ids", "student_labels", "teacher_ids", align)
    with DatasetWriter(out, fields=fields) as writer:
        for sample in make_samples(n, pipeline, seed):
            writer.add({k: np.asarray(sample[k]).reshape(-1) for k in fields})
        writer.meta = dataset_meta(pipeline, seq_length)
    return TideAlignedDataset(out)


def make_samples(n: int, pipeline: str, seed: int = 0, prompt_chars: int = 6, content_chars: int = 40,
                 student_vocab: int = STUDENT_VOCAB - 8, teacher_vocab: int = MOE_TEACHER["vocab_size"] - 8,
                 teacher_template: int = 3) -> list[dict]:
    """``n`` samples for pipeline "A" (chunks) or "B" (pairs), in ``TideAlignedDataset``'s item format."""
    chain = random.Random(1234)
    nxt = {c: [chain.randrange(ALPHABET) for _ in range(2)] for c in range(ALPHABET)}
    rng = random.Random(seed)
    samples = []
    for _ in range(n):
        text = [rng.randrange(ALPHABET)]
        for _ in range(prompt_chars + content_chars - 1):
            text.append(rng.choice(nxt[text[-1]]))
        prompt, content = text[:prompt_chars], text[prompt_chars:]
        s_prompt = _split(prompt, rng, 2)
        s_content = _split(content, rng, 2)
        s_ids = [_token_id(p, student_vocab, 7) for p in s_prompt + s_content]
        labels = [-100] * len(s_prompt) + s_ids[len(s_prompt):]
        if pipeline == "A":
            t_prompt, t_content = _split(prompt, rng, 3), _split(content, rng, 3)
            t_ids = [_token_id(p, teacher_vocab, 11) for p in t_prompt + t_content]
            t_ids = [teacher_vocab + 1] * teacher_template + t_ids  # template tokens: in no chunk
            sc, tc = _chunks(s_prompt + s_content, t_prompt + t_content)
            tc = [-1] * teacher_template + tc
            samples.append(dict(student_ids=torch.tensor(s_ids), student_labels=torch.tensor(labels),
                                teacher_ids=torch.tensor(t_ids), chunks=_spans(sc, tc),
                                pairs=torch.zeros(0, 2, dtype=torch.int64)))
        else:
            t_ids = [student_vocab + 1] * teacher_template + s_ids  # same tokeniser, other template
            pairs = [(k, k + teacher_template) for k in range(len(s_prompt), len(s_ids))]  # assistant content only
            samples.append(dict(student_ids=torch.tensor(s_ids), student_labels=torch.tensor(labels),
                                teacher_ids=torch.tensor(t_ids), chunks=torch.zeros(0, 4, dtype=torch.int64),
                                pairs=torch.tensor(pairs, dtype=torch.int64).view(-1, 2)))
    return samples

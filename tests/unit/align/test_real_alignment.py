"""Chunk alignment on 200 real stdlib snippets (code + docstring prose) for real tokenizer pairs (§5.1-5.2).

Checked independently of the byte strings the chunker used: each chunk's two token spans cover the same text
(via each side's character offsets), chunks are disjoint and ordered, and they tile the content.
"""

import pytest

from tide_megatron.align.alignment import align_chunks
from tide_megatron.align.templates import render_conversation, resolve_template
from tide_megatron.data.stdlib_snippets import stdlib_snippets

PAIRS = [  # (student, teacher)
    ("qwen2", "llama-spm"),  # Qwen BPE vs SentencePiece with byte fallback
    ("mistral-v1", "gpt-2"),  # the tiny demo pair: SentencePiece student, GPT-2 BPE teacher
    ("qwen2", "bert-bge"),  # WordPiece teacher (lowercases, drops whitespace)
    ("llama-bpe", "qwen2"),  # two different byte-level BPEs
]


@pytest.fixture(scope="module")
def conversations():
    convs = stdlib_snippets(200, seed=0)
    assert sum(c["kind"] == "code" for c in convs) >= 60 and sum(c["kind"] == "prose" for c in convs) >= 60
    return convs


def _span_text(conv, a, b):
    return conv.text[conv.offsets[a][0] : conv.offsets[b - 1][1]]


@pytest.mark.slow
@pytest.mark.parametrize("student,teacher", PAIRS)
def test_chunks_match_and_tile_real_content(tok, conversations, student, teacher):
    S, T = tok(student), tok(teacher)
    s_tpl, t_tpl = resolve_template("qwen3", S, "qwen3"), resolve_template("llada2", T, "llada2")
    content_chars = covered_chars = 0
    tiled = messages = 0
    for conv in conversations:
        msgs = conv["messages"]
        sc, tc = render_conversation(S, s_tpl, msgs), render_conversation(T, t_tpl, msgs)
        chunks = align_chunks(T, tc, S, sc)
        for prev, nxt in zip(chunks, chunks[1:]):  # disjoint and ordered on both sides
            assert prev.t_end <= nxt.t_start and prev.s_end <= nxt.s_start
        for c in chunks:
            s_text, t_text = _span_text(sc, c.s_start, c.s_end), _span_text(tc, c.t_start, c.t_end)
            if T.kind == "wordpiece":  # offsets exclude the whitespace a WordPiece token follows
                assert s_text.strip() == t_text.strip(), (c, s_text, t_text)
            else:
                assert s_text == t_text, (c, s_text, t_text)
        # tiling: per message, the chunks inside the content are contiguous and cover it up to its edges
        for k, span in enumerate(sc.content_spans):
            if span is None:
                continue
            a, b = span
            mine = [c for c in chunks if a <= sc.offsets[c.s_start][0] and sc.offsets[c.s_end - 1][1] <= b]
            messages += 1
            content_chars += b - a
            covered_chars += sum(sc.offsets[c.s_end - 1][1] - sc.offsets[c.s_start][0] for c in mine)
            if not mine:
                continue
            contiguous = all(p.s_end == q.s_start and p.t_end == q.t_start for p, q in zip(mine, mine[1:]))
            head = sc.text[a : sc.offsets[mine[0].s_start][0]]
            tail = sc.text[sc.offsets[mine[-1].s_end - 1][1] : b]
            # an edge word merged with template text on one side (".<" from "." + "<|role_end|>", ">You" from
            # "</role>" + "You" when the markers are not special tokens) is all that may stay outside the chunks
            if contiguous and len(head.split()) <= 1 and len(tail.split()) <= 1:
                tiled += 1
    coverage = covered_chars / content_chars
    assert coverage > 0.97, coverage
    assert tiled / messages > 0.97, (tiled, messages)

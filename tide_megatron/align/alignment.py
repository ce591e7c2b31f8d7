"""Alignments of one conversation rendered for two tokenizers: chunks (§5.1-5.2) and position pairs (§2.4)."""

from __future__ import annotations

from tide_megatron.align.chunks import Chunk, chunk_byte_strings, shift_chunks
from tide_megatron.align.templates import RenderedConversation
from tide_megatron.align.tokenizers import TideTokenizer


def _effective_spans(conv: RenderedConversation, tok: TideTokenizer, a: int, b: int, k: int) -> list[tuple[int, int]]:
    """Character spans of tokens a..b-1 of message k, relative to the content start.

    For WordPiece (no whitespace tokens) whitespace before a token joins it and whitespace after the last
    token joins the last token, so that token spans tile the content like byte-level tokens do.
    """
    c0, c1 = conv.content_spans[k]
    spans = [(s - c0, e - c0) for s, e in conv.offsets[a:b]]
    if tok.kind != "wordpiece" or not spans:
        return spans
    out = []
    prev = 0 if not conv.text[c0 : c0 + spans[0][0]].strip() else spans[0][0]
    for s, e in spans:
        out.append((min(prev, s), e))
        prev = e
    if not conv.text[c0 + out[-1][1] : c1].strip():
        out[-1] = (out[-1][0], c1 - c0)
    return out


def _common_token_spans(
    teacher: TideTokenizer, t_conv: RenderedConversation, student: TideTokenizer, s_conv: RenderedConversation, k: int
):
    """Token spans of message k on both sides, trimmed until both start and end at the same content offset.

    A token that straddles the content boundary on one side (merged with template text) is excluded by the
    fully-inside rule; trimming the other side to the next shared boundary keeps the two byte streams in step.
    Returns ((ta, tb), (sa, sb), (start, end)) with the shared character range, or None.
    """
    ts, ss = t_conv.token_span(k), s_conv.token_span(k)
    if ts is None or ss is None:
        return None
    t_sp = _effective_spans(t_conv, teacher, ts[0], ts[1], k)
    s_sp = _effective_spans(s_conv, student, ss[0], ss[1], k)
    i, j = 0, 0
    ie, je = len(t_sp), len(s_sp)
    while i < ie and j < je and t_sp[i][0] != s_sp[j][0]:
        if t_sp[i][0] < s_sp[j][0]:
            i += 1
        else:
            j += 1
    while i < ie and j < je and t_sp[ie - 1][1] != s_sp[je - 1][1]:
        if t_sp[ie - 1][1] > s_sp[je - 1][1]:
            ie -= 1
        else:
            je -= 1
    if i >= ie or j >= je:
        return None
    return (ts[0] + i, ts[0] + ie), (ss[0] + j, ss[0] + je), (t_sp[i][0], t_sp[ie - 1][1])


def align_chunks(
    teacher: TideTokenizer, t_conv: RenderedConversation, student: TideTokenizer, s_conv: RenderedConversation
) -> list[Chunk]:
    """Chunks of every message's content (system, user and assistant; prompt chunks are filtered at train time)."""
    chunks: list[Chunk] = []
    for k in range(len(t_conv.content_spans)):
        if t_conv.content_spans[k] is None or s_conv.content_spans[k] is None:
            continue
        spans = _common_token_spans(teacher, t_conv, student, s_conv, k)
        if spans is None:
            continue
        (ta, tb), (sa, sb), (start, end) = spans
        t0, s0 = t_conv.content_spans[k][0], s_conv.content_spans[k][0]
        t_strs = teacher.byte_strings(t_conv.ids[ta:tb], t_conv.offsets[ta:tb], t_conv.text, t0 + start, t0 + end)
        s_strs = student.byte_strings(s_conv.ids[sa:sb], s_conv.offsets[sa:sb], s_conv.text, s0 + start, s0 + end)
        chunks.extend(shift_chunks(chunk_byte_strings(t_strs, s_strs), ta, sa))
    return chunks


def align_pairs(t_conv: RenderedConversation, s_conv: RenderedConversation, roles: tuple[str, ...] = ("assistant",),
                messages: list[dict] | None = None) -> list[tuple[int, int]]:
    """§2.4: pair the i-th content token of each side, per assistant message; returns (student, teacher) indices."""
    pairs: list[tuple[int, int]] = []
    for k in range(len(t_conv.content_spans)):
        if messages is not None and messages[k]["role"] not in roles:
            continue
        ts, ss = t_conv.token_span(k), s_conv.token_span(k)
        if ts is None or ss is None:
            continue
        n = min(ts[1] - ts[0], ss[1] - ss[0])
        pairs.extend((ss[0] + i, ts[0] + i) for i in range(n))
    return pairs

"""Alignments of one conversation rendered for two tokenizers: chunks (§5.1-5.2) and position pairs (§2.4)."""

from __future__ import annotations

from tide_megatron.align.chunks import Chunk, chunk_byte_strings, shift_chunks
from tide_megatron.align.templates import RenderedConversation
from tide_megatron.align.tokenizers import TideTokenizer


def _common_token_spans(
    t_conv: RenderedConversation, s_conv: RenderedConversation, k: int
) -> tuple[tuple[int, int], tuple[int, int]] | None:
    """Token spans of message k on both sides, trimmed until both start and end at the same content offset.

    A token that straddles the content boundary on one side (merged with template text) is excluded by the
    fully-inside rule; trimming the other side to the next shared boundary keeps the two byte streams in step.
    """
    ts, ss = t_conv.token_span(k), s_conv.token_span(k)
    if ts is None or ss is None:
        return None
    (ta, tb), (sa, sb) = ts, ss
    t0, s0 = t_conv.content_spans[k][0], s_conv.content_spans[k][0]
    t_start = lambda i: t_conv.offsets[i][0] - t0  # noqa: E731
    s_start = lambda j: s_conv.offsets[j][0] - s0  # noqa: E731
    t_end = lambda i: t_conv.offsets[i - 1][1] - t0  # noqa: E731
    s_end = lambda j: s_conv.offsets[j - 1][1] - s0  # noqa: E731
    while ta < tb and sa < sb and t_start(ta) != s_start(sa):
        if t_start(ta) < s_start(sa):
            ta += 1
        else:
            sa += 1
    while ta < tb and sa < sb and t_end(tb) != s_end(sb):
        if t_end(tb) > s_end(sb):
            tb -= 1
        else:
            sb -= 1
    if ta >= tb or sa >= sb:
        return None
    return (ta, tb), (sa, sb)


def align_chunks(
    teacher: TideTokenizer, t_conv: RenderedConversation, student: TideTokenizer, s_conv: RenderedConversation
) -> list[Chunk]:
    """Chunks of every message's content (system, user and assistant; prompt chunks are filtered at train time)."""
    chunks: list[Chunk] = []
    for k in range(len(t_conv.content_spans)):
        spans = _common_token_spans(t_conv, s_conv, k)
        if spans is None:
            continue
        (ta, tb), (sa, sb) = spans
        t_strs = teacher.byte_strings(t_conv.ids[ta:tb], t_conv.offsets[ta:tb], t_conv.text, t_conv.offsets[ta][0])
        s_strs = student.byte_strings(s_conv.ids[sa:sb], s_conv.offsets[sa:sb], s_conv.text, s_conv.offsets[sa][0])
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

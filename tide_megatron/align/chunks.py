"""Byte-level chunk alignment between two tokenizations of the same text (spec §5.2, §5.3, pitfalls 18-19).

A chunk is the minimal pair of token spans (teacher [t0, t1), student [s0, s1)) whose byte strings end at the
same byte boundary. Chunks are found with two pointers over cumulative byte lengths, after the leading-space
fix; a chunk whose two byte strings differ is dropped.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

SPACE = "Ġ"  # byte-level form of b" "


class Chunk(NamedTuple):
    """Token spans, ends exclusive: teacher [t_start, t_end) <-> student [s_start, s_end) (spec §10 order)."""

    t_start: int
    t_end: int
    s_start: int
    s_end: int


def _leading_spaces(text: str) -> int:
    return len(text) - len(text.lstrip(SPACE))


def leading_space_fix(teacher: Sequence[str], student: Sequence[str]) -> tuple[list[str], list[str]]:
    """§5.2 step 2: prepend "Ġ" to the first token of the side with fewer leading spaces until counts match.

    Leading spaces are counted over each side's whole string, not its first token only: indentation split as
    ["Ġ", "Ġ", "Ġx"] vs ["ĠĠ", "Ġx"] needs no fix, while a dummy-prefix space (SentencePiece "▁Hello" vs
    "Hello") does. Counting the first token alone would shift every chunk of indented code and drop them all.
    """
    t, s = list(teacher), list(student)
    if not t or not s:
        return t, s
    nt, ns = _leading_spaces("".join(t)), _leading_spaces("".join(s))
    if nt < ns:
        t[0] = SPACE * (ns - nt) + t[0]
    elif ns < nt:
        s[0] = SPACE * (nt - ns) + s[0]
    return t, s


def chunk_byte_strings(teacher: Sequence[str], student: Sequence[str]) -> list[Chunk]:
    """§5.2 steps 2-4 on byte-level token strings; indices are relative to the two lists.

    >>> chunk_byte_strings(["Hel", "lo", "Ġworld", "!"], ["Hello", "Ġwor", "ld", "!"])
    [Chunk(t_start=0, t_end=2, s_start=0, s_end=1), Chunk(t_start=2, t_end=3, s_start=1, s_end=3), \
Chunk(t_start=3, t_end=4, s_start=3, s_end=4)]
    """
    t, s = leading_space_fix(teacher, student)
    chunks: list[Chunk] = []
    i = j = 0
    i0 = j0 = 0
    len_t = len_s = 0  # cumulative lengths of the tokens consumed so far
    while i < len(t) and j < len(s):
        next_t, next_s = len_t + len(t[i]), len_s + len(s[j])
        if next_t == next_s:
            if "".join(t[i0 : i + 1]) == "".join(s[j0 : j + 1]):  # step 4: drop on mismatch
                chunks.append(Chunk(i0, i + 1, j0, j + 1))
            len_t, len_s = next_t, next_s
            i, j = i + 1, j + 1
            i0, j0 = i, j
        elif next_t < next_s:
            len_t = next_t
            i += 1
        else:
            len_s = next_s
            j += 1
    return chunks


def shift_chunks(chunks: Sequence[Chunk], t_offset: int, s_offset: int) -> list[Chunk]:
    """§5.2 step 5: range-relative token indices -> full-sequence indices."""
    return [Chunk(c.t_start + t_offset, c.t_end + t_offset, c.s_start + s_offset, c.s_end + s_offset) for c in chunks]


def teacher_cutoff(chunks: Sequence[Chunk], teacher_len: int, student_len: int, max_teacher_len: int) -> int:
    """§5.3: the teacher ends at the end of the last chunk that fits in the student, capped at max_teacher_len."""
    if not chunks:
        return min(teacher_len, max_teacher_len)
    cutoff = teacher_len
    for c in chunks:
        if c.s_end > student_len:
            cutoff = c.t_start
            break
        cutoff = c.t_end
    return min(cutoff, max_teacher_len)


def keep_chunks_within(chunks: Sequence[Chunk], teacher_len: int, student_len: int) -> list[Chunk]:
    """Drop chunks cut by either truncation (pitfall 18: dropped rather than silently truncated)."""
    return [c for c in chunks if c.t_end <= teacher_len and c.s_end <= student_len]

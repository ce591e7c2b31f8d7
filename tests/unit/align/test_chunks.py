"""Chunking (spec §5.2, §11.9) and the teacher cutoff (§5.3, pitfall 18)."""

from tide_megatron.align.chunks import Chunk, chunk_byte_strings, keep_chunks_within, leading_space_fix, shift_chunks, teacher_cutoff


def test_spec_11_9_vectors():
    assert chunk_byte_strings(["Hel", "lo", "Ġworld", "!"], ["Hello", "Ġwor", "ld", "!"]) == [
        (0, 2, 0, 1), (2, 3, 1, 3), (3, 4, 3, 4)]
    assert chunk_byte_strings(["Ġdef", "Ġf", "(x", ")"], ["Ġdef", "Ġf", "(", "x", ")"]) == [
        (0, 1, 0, 1), (1, 2, 1, 2), (2, 3, 2, 4), (3, 4, 4, 5)]


def test_leading_space_fix_adds_missing_prefix_space():
    # SentencePiece dummy prefix on the student: "ĠHello" vs teacher "Hello"
    t, s = leading_space_fix(["Hello", "Ġworld"], ["ĠHello", "Ġworld"])
    assert t == ["ĠHello", "Ġworld"] and s == ["ĠHello", "Ġworld"]
    assert chunk_byte_strings(["Hello", "Ġworld"], ["ĠHello", "Ġworld"]) == [(0, 1, 0, 1), (1, 2, 1, 2)]


def test_leading_space_fix_counts_whole_side_not_first_token():
    # indentation split differently is not a missing space: no prefix, all chunks kept
    teacher, student = ["Ġ", "Ġ", "Ġ", "Ġdef"], ["ĠĠĠĠ", "def"]
    assert leading_space_fix(teacher, student) == (teacher, student)
    assert chunk_byte_strings(teacher, student) == [(0, 4, 0, 2)]


def test_mismatching_chunk_is_dropped_and_alignment_continues():
    # same lengths, different bytes in the middle chunk ("cat" vs "cot")
    chunks = chunk_byte_strings(["Ġa", "Ġcat", "Ġsat"], ["Ġa", "Ġc", "ot", "Ġsat"])
    assert chunks == [(0, 1, 0, 1), (2, 3, 3, 4)]


def test_stops_when_a_side_runs_out():
    assert chunk_byte_strings(["ab", "cd"], ["a", "b"]) == [(0, 1, 0, 2)]
    assert chunk_byte_strings([], ["a"]) == []


def test_shift_and_cutoff():
    chunks = shift_chunks([Chunk(0, 2, 0, 1), Chunk(2, 3, 1, 3), Chunk(3, 4, 3, 4)], 10, 5)
    assert chunks == [(10, 12, 5, 6), (12, 13, 6, 8), (13, 14, 8, 9)]
    # all chunks fit: cut at the end of the last chunk (template tail dropped)
    assert teacher_cutoff(chunks, teacher_len=20, student_len=512, max_teacher_len=1024) == 14
    # the second chunk's student end (8) passes the student length 7: cut at its teacher start
    assert teacher_cutoff(chunks, 20, 7, 1024) == 12
    # no chunks: the full length, capped
    assert teacher_cutoff([], 2000, 512, 1024) == 1024
    # the cap cuts through a chunk: that chunk is dropped, not truncated
    assert teacher_cutoff(chunks, 20, 512, 13) == 13
    assert keep_chunks_within(chunks, teacher_len=13, student_len=512) == [(10, 12, 5, 6), (12, 13, 6, 8)]
    assert keep_chunks_within(chunks, teacher_len=12, student_len=512) == [(10, 12, 5, 6)]

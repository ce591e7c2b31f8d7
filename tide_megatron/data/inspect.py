"""Render one preprocessed sample's two tokenizations with chunk (or pair) boundaries, for `tide-preprocess inspect`."""

from __future__ import annotations

from tide_megatron.align.tokenizers import TideTokenizer, from_byte_level, load_tokenizer
from tide_megatron.data.indexed import TideAlignedDataset


def _show(tok: TideTokenizer, ids) -> list[str]:
    """Each token's own bytes (spaces and partial UTF-8 visible), escaped; WordPiece shows its vocabulary piece."""
    if tok.kind == "wordpiece":
        return [repr(p)[1:-1] for p in tok.tokens(ids)]
    return [repr(from_byte_level(tok.piece_bytes(i)).decode("utf-8", "backslashreplace"))[1:-1] for i in ids]


def render_sample(dataset: TideAlignedDataset, index: int, student: TideTokenizer | None = None,
                  teacher: TideTokenizer | None = None, max_rows: int | None = None) -> str:
    """Text view: header, student prompt, then one row per chunk `[c] student pieces | teacher pieces`."""
    if not 0 <= index < len(dataset):
        raise IndexError(f"sample {index} out of range: the dataset has {len(dataset)} samples")
    cfg = dataset.meta["config"]
    student = student or load_tokenizer(cfg["student_tokenizer"])
    teacher = teacher or load_tokenizer(cfg["teacher_tokenizer"])
    item = dataset[index]
    s_ids, labels, t_ids = item["student_ids"].tolist(), item["student_labels"].tolist(), item["teacher_ids"].tolist()
    prompt_len = next((k for k, v in enumerate(labels) if v != -100), len(labels))
    lines = [f"sample {index}: student {len(s_ids)} tokens ({prompt_len} prompt), teacher {len(t_ids)} tokens, "
             f"{len(item['chunks'])} chunks, {len(item['pairs'])} pairs",
             "student prompt: " + "|".join(_show(student, s_ids[:prompt_len]))]
    rows = item["chunks"].tolist() if cfg["align"] == "chunks" else [[t, t + 1, s, s + 1] for s, t in item["pairs"].tolist()]
    for c, (t0, t1, s0, s1) in enumerate(rows[:max_rows]):
        mark = "P" if any(labels[j] == -100 for j in range(s0, s1)) else " "
        lines.append(f"[{c:4d}]{mark} s[{s0}:{s1}] {'|'.join(_show(student, s_ids[s0:s1])):<30} "
                     f"t[{t0}:{t1}] {'|'.join(_show(teacher, t_ids[t0:t1]))}")
    if max_rows is not None and len(rows) > max_rows:
        lines.append(f"... {len(rows) - max_rows} more")
    return "\n".join(lines)

"""Turn one conversation into a TIDE training sample: both tokenizations plus their alignment (§1.2, §2.4, §5.1-5.3).

The sample holds int32 arrays: `student_ids`, `student_labels` (prompt = -100, right-truncated to the student
length), `teacher_ids` (cut per §5.3 for chunks or after the last aligned token per §2.4 for pairs, capped at
the teacher length), `chunks` (flattened (t_start, t_end, s_start, s_end) rows) and `pairs` (flattened
(student, teacher) rows). Reasons for dropping a sample are short keys counted by the preprocessing summary.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np

from tide_megatron.align.alignment import align_chunks, align_pairs
from tide_megatron.align.chunks import keep_chunks_within, teacher_cutoff
from tide_megatron.align.templates import (
    TEMPLATE_EOS,
    SampleError,
    render_conversation,
    resolve_template,
    validate_messages,
)
from tide_megatron.align.tokenizers import TideTokenizer, load_tokenizer

FIELDS = ("student_ids", "student_labels", "teacher_ids", "chunks", "pairs")
AlignMode = Literal["chunks", "pairs"]


@dataclass
class SampleConfig:
    """What defines a preprocessed dataset; stored in its meta.json."""

    student_tokenizer: str
    teacher_tokenizer: str
    student_template: str = "auto"  # auto = the tokenizer's own template, else the built-in qwen3
    teacher_template: str = "auto"  # auto = the tokenizer's own template, else the built-in llada2
    student_max_len: int = 512
    teacher_max_len: int = 1024  # 1024 for pipeline A (chunks), 768 for pipeline B (pairs)
    align: AlignMode = "chunks"
    student_eos_token: str | None = None  # default: the template's eos (qwen3: <|im_end|>), else the tokenizer's
    teacher_eos_token: str | None = None
    text_prompt: str = "Write the following text."
    check_pair_ids: bool = False  # pairs mode: skip a sample whose paired ids differ (§9.16, optional)

    def __post_init__(self) -> None:
        if self.align not in ("chunks", "pairs"):
            raise ValueError(f"--align {self.align!r}: expected 'chunks' or 'pairs'")
        if self.student_max_len <= 0 or self.teacher_max_len <= 0:
            raise ValueError("--student-max-len and --teacher-max-len must be positive")

    def to_json(self) -> dict:
        return asdict(self)


class SampleBuilder:
    """Loads both tokenizers once and builds samples; picklable by config (workers rebuild it)."""

    def __init__(self, config: SampleConfig):
        self.config = config
        self.student: TideTokenizer = load_tokenizer(config.student_tokenizer, eos_token=config.student_eos_token)
        self.teacher: TideTokenizer = load_tokenizer(config.teacher_tokenizer, eos_token=config.teacher_eos_token)
        if config.student_eos_token is None and config.student_template in TEMPLATE_EOS:
            implied = TEMPLATE_EOS[config.student_template]
            if self.student.token_id(implied) is not None:
                self.student = self.student.with_eos(implied)
        self.student_template = resolve_template(config.student_template, self.student, "qwen3")
        self.teacher_template = resolve_template(config.teacher_template, self.teacher, "llada2")

    def messages_from_record(self, record: str | dict) -> list[dict]:
        """A JSONL line (str) or a parsed record -> validated messages; {"text": ...} becomes prompt + answer."""
        if isinstance(record, str):
            try:
                record = json.loads(record)
            except json.JSONDecodeError as e:
                raise SampleError("invalid_json", str(e)) from None
        if not isinstance(record, dict):
            raise SampleError("invalid_record", "expected a JSON object per line")
        if "messages" in record:
            return validate_messages(record["messages"])
        if isinstance(record.get("text"), str):
            return self.text_to_messages(record["text"])
        raise SampleError("no_messages", "expected a 'messages' list (or a 'text' string)")

    def text_to_messages(self, text: str) -> list[dict]:
        """Plain text becomes a fixed user prompt (`text_prompt`) and the text as the assistant response."""
        if not text.strip():
            raise SampleError("empty_text")
        return [{"role": "user", "content": self.config.text_prompt}, {"role": "assistant", "content": text}]

    def build(self, messages: list[dict]) -> dict[str, np.ndarray]:
        cfg = self.config
        s_conv = render_conversation(self.student, self.student_template, messages)
        t_conv = render_conversation(self.teacher, self.teacher_template, messages)
        if s_conv.prompt_len >= cfg.student_max_len:
            raise SampleError("prompt_too_long", f"student prompt has {s_conv.prompt_len} tokens >= {cfg.student_max_len}")
        if s_conv.prompt_len >= len(s_conv.ids):
            raise SampleError("empty_response", "the assistant response adds no student token")
        s_ids = s_conv.ids[: cfg.student_max_len]
        s_labels = s_conv.labels()[: cfg.student_max_len]
        s_len = len(s_ids)

        chunk_rows = np.zeros((0, 4), dtype=np.int32)
        pair_rows = np.zeros((0, 2), dtype=np.int32)
        if cfg.align == "chunks":
            chunks = align_chunks(self.teacher, t_conv, self.student, s_conv)
            cut = teacher_cutoff(chunks, len(t_conv.ids), s_len, cfg.teacher_max_len)
            chunks = keep_chunks_within(chunks, cut, s_len)
            if chunks:
                chunk_rows = np.asarray(chunks, dtype=np.int32)
        else:
            pairs = [(s, t) for s, t in align_pairs(t_conv, s_conv, ("assistant",), messages) if s < s_len]
            cut = (max(t for _, t in pairs) + 1) if pairs else len(t_conv.ids)
            cut = min(cut, cfg.teacher_max_len)
            pairs = [(s, t) for s, t in pairs if t < cut]
            if cfg.check_pair_ids:
                differ = sum(s_ids[s] != t_conv.ids[t] for s, t in pairs)
                if differ:
                    raise SampleError("pair_ids_differ", f"{differ} of {len(pairs)} paired ids differ "
                                      "(pairs assume one shared tokenizer, §2.4)")
            if pairs:
                pair_rows = np.asarray(pairs, dtype=np.int32)
        if cut <= 0:
            raise SampleError("teacher_empty", "no teacher token survives the cutoff")
        return {
            "student_ids": np.asarray(s_ids, dtype=np.int32),
            "student_labels": np.asarray(s_labels, dtype=np.int32),
            "teacher_ids": np.asarray(t_conv.ids[:cut], dtype=np.int32),
            "chunks": chunk_rows.reshape(-1),
            "pairs": pair_rows.reshape(-1),
        }

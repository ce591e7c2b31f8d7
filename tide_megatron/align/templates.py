"""Chat templates for the student and the teachers, prompt-masked labels and content ranges (spec §1.2, §2.4, §5.1).

Rendering always goes through the tokenizer's `apply_chat_template` (jinja), with either the tokenizer's own
template or one of the built-ins below. Built-ins are written from the published formats:
- `qwen3`: ChatML; thinking disabled, so the final assistant turn and the generation prompt carry an empty
  `<think>\\n\\n</think>\\n\\n` block (§1.1); earlier assistant turns carry none.
- `llada2`: `<role>SYSTEM|HUMAN|ASSISTANT</role>` before each message and `<|role_end|>` after it; with no
  system message the default system text `detailed thinking off` is used (as in LLaDA2's published prompts).
- `wedlm`: ChatML without any think block (WeDLM-8B-Instruct derives from Qwen3-8B; assumed).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from jinja2.exceptions import TemplateError

from tide_megatron.align.tokenizers import TideTokenizer
from tide_megatron.diffusion.noise import IGNORE_INDEX

ROLES = ("system", "user", "assistant")

QWEN3_TEMPLATE = (
    "{%- set ns = namespace(last=-1) -%}"
    "{%- for m in messages -%}{%- if m['role'] == 'assistant' -%}{%- set ns.last = loop.index0 -%}{%- endif -%}"
    "{%- endfor -%}"
    "{%- for m in messages -%}"
    "{{- '<|im_start|>' + m['role'] + '\\n' -}}"
    "{%- if m['role'] == 'assistant' and loop.index0 == ns.last and not add_generation_prompt -%}"
    "{{- '<think>\\n\\n</think>\\n\\n' -}}{%- endif -%}"
    "{{- m['content'] + '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n<think>\\n\\n</think>\\n\\n' -}}{%- endif -%}"
)

LLADA2_TEMPLATE = (
    "{%- if not messages or messages[0]['role'] != 'system' -%}"
    "{{- '<role>SYSTEM</role>detailed thinking off<|role_end|>' -}}{%- endif -%}"
    "{%- for m in messages -%}"
    "{%- set tag = {'system': 'SYSTEM', 'user': 'HUMAN', 'assistant': 'ASSISTANT'}[m['role']] -%}"
    "{{- '<role>' + tag + '</role>' + m['content'] + '<|role_end|>' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<role>ASSISTANT</role>' -}}{%- endif -%}"
)

WEDLM_TEMPLATE = (
    "{%- for m in messages -%}"
    "{{- '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)

BUILTIN_TEMPLATES = {"qwen3": QWEN3_TEMPLATE, "llada2": LLADA2_TEMPLATE, "wedlm": WEDLM_TEMPLATE}
# The eos a built-in template implies when it is one token of the vocabulary: Qwen3's eos is <|im_end|> (§1.1).
TEMPLATE_EOS = {"qwen3": "<|im_end|>"}


class SampleError(ValueError):
    """A conversation that cannot become a training sample; `reason` is a short key for skip counts."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def resolve_template(name: str, tokenizer: TideTokenizer, fallback: str) -> str:
    """`own` = the tokenizer's template (error if it has none); `auto` = own if present, else `fallback`;
    a path ending in `.jinja` = that file's template."""
    if name.endswith(".jinja"):
        path = Path(name)
        if not path.is_file():
            raise ValueError(f"chat template file {name}: no such file")
        return path.read_text(encoding="utf-8")
    if name in BUILTIN_TEMPLATES:
        return BUILTIN_TEMPLATES[name]
    if name in ("own", "auto"):
        if tokenizer.chat_template:
            return tokenizer.chat_template
        if name == "own":
            raise ValueError(f"--template own: tokenizer {tokenizer.name!r} has no chat template")
        return BUILTIN_TEMPLATES[fallback]
    raise ValueError(f"chat template {name!r}: expected auto, own, a .jinja file or one of {', '.join(BUILTIN_TEMPLATES)}")


def validate_messages(messages) -> list[dict]:
    """Messages must be a non-empty list of {role in ROLES, content: str}, ending with an assistant turn."""
    if not isinstance(messages, list) or not messages:
        raise SampleError("no_messages", "field 'messages' must be a non-empty list")
    out = []
    for k, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m:
            raise SampleError("missing_role", f"messages[{k}] has no 'role'")
        if m["role"] not in ROLES:
            raise SampleError("unknown_role", f"messages[{k}].role = {m['role']!r}, expected one of {ROLES}")
        if not isinstance(m.get("content"), str):
            raise SampleError("bad_content", f"messages[{k}].content must be a string")
        out.append({"role": m["role"], "content": m["content"]})
    if out[-1]["role"] != "assistant":
        raise SampleError("last_not_assistant", "the last message must be the assistant response")
    return out


def render(tokenizer: TideTokenizer, template: str, messages: Sequence[dict], add_generation_prompt: bool = False) -> str:
    """The conversation as text in `template` (thinking disabled); a template's own refusal is a SampleError."""
    try:
        return tokenizer.hf.apply_chat_template(
            list(messages), chat_template=template, tokenize=False,
            add_generation_prompt=add_generation_prompt, enable_thinking=False,
        )
    except TemplateError as e:  # e.g. raise_exception("roles must alternate") inside a tokenizer's template
        raise SampleError("template_error", f"{tokenizer.name} template: {e}") from None


@dataclass
class RenderedConversation:
    """One tokenization of a conversation: text, ids, offsets, prompt length and per-message char spans."""

    text: str
    ids: list[int]
    offsets: list[tuple[int, int]]
    prompt_len: int
    content_spans: list[tuple[int, int] | None]  # per message, None for blank content

    def labels(self) -> list[int]:
        """§1.2: labels = ids with the prompt (everything before the last assistant turn) set to -100."""
        return [IGNORE_INDEX] * self.prompt_len + self.ids[self.prompt_len :]

    def token_span(self, message_index: int) -> tuple[int, int] | None:
        """Tokens lying fully inside the message's content (§2.4), as [start, end); None if none."""
        span = self.content_spans[message_index]
        if span is None:
            return None
        c0, c1 = span
        inside = [k for k, (a, b) in enumerate(self.offsets) if a >= c0 and b <= c1 and b > a]
        if not inside:
            return None
        return inside[0], inside[-1] + 1


def _placeholder_spans(tokenizer: TideTokenizer, template: str, messages: Sequence[dict], text: str):
    """Exact content spans: render with a unique placeholder per message, then shift by the length differences.

    A plain search can match short content inside template text ("A" inside "<role>ASSISTANT</role>"); the
    placeholders cannot. Returns None when the template does not reproduce content verbatim (then the caller
    falls back to the sequential search of §5.1).
    """
    holders = [f"\ue000{k}\ue001" for k in range(len(messages))]
    ph_text = render(tokenizer, template, [{"role": m["role"], "content": h} for m, h in zip(messages, holders)])
    found = []
    for k, h in enumerate(holders):
        at = ph_text.find(h)
        if at < 0 or ph_text.find(h, at + 1) >= 0:
            return None
        found.append((at, k))
    spans: list[tuple[int, int] | None] = [None] * len(messages)
    shift = 0
    for at, k in sorted(found):
        content = messages[k]["content"]
        start = at + shift
        if text[start : start + len(content)] != content:
            return None
        spans[k] = (start, start + len(content)) if content.strip() else None
        shift += len(content) - len(holders[k])
    if len(text) != len(ph_text) + shift:
        return None
    return spans


def _sequential_spans(tokenizer: TideTokenizer, messages: Sequence[dict], text: str) -> list[tuple[int, int] | None]:
    """§5.1: each content's first occurrence after the previous match."""
    spans: list[tuple[int, int] | None] = []
    cursor = 0
    for k, m in enumerate(messages):
        content = m["content"]
        if not content.strip():
            spans.append(None)
            continue
        at = text.find(content, cursor)
        if at < 0:
            raise SampleError("content_not_in_template",
                              f"messages[{k}] content not found in the rendered {tokenizer.name} template")
        spans.append((at, at + len(content)))
        cursor = at + len(content)
    return spans


def render_conversation(tokenizer: TideTokenizer, template: str, messages: Sequence[dict]) -> RenderedConversation:
    """Render + tokenize, compute prompt_len (§1.2) and locate each message's content (§5.1)."""
    text = render(tokenizer, template, messages)
    enc = tokenizer.encode(text)
    prompt_text = render(tokenizer, template, messages[:-1], add_generation_prompt=True)
    prompt_len = len(tokenizer.encode(prompt_text).ids)
    spans = _placeholder_spans(tokenizer, template, messages, text)
    if spans is None:
        spans = _sequential_spans(tokenizer, messages, text)
    return RenderedConversation(text, enc.ids, enc.offsets, prompt_len, spans)

"""Chat prompts and outputs of the evaluation protocol (spec §7.2): one home for the think-block rules.

- A prompt is rendered with the tokenizer's chat template (thinking disabled); a tokenizer without one
  gets the student's training format, the built-in Qwen3 template of ``align/templates.py`` (§1.1).
- The empty think block ``<think>\\n\\n</think>\\n\\n`` is appended to the generation prompt when the
  template did not write one and the vocabulary has ``<think>`` (the reference's ``INJECT_THINK=1``).
- An assistant message at the end of the history is a prefill (the harness's ``gen_prefix``): the
  history before it is rendered with a generation prompt and the prefill is appended after the think
  block, so the model continues the prefill inside its own turn.
- Generated text has its ``<think>...</think>`` spans removed (at the token level when the tags
  are tokens, then in the text) before it is cut at stop strings; ``<|im_end|>`` and
  ``<|endoftext|>`` end a completion like eos does.
"""

from __future__ import annotations

import re
from typing import Iterable, Sequence

THINK_BLOCK = "<think>\n\n</think>\n\n"
STOP_TOKENS = ("<|im_end|>", "<|endoftext|>")  # Qwen3's turn end and document end: a completion ends there
_THINK_SPAN = re.compile(r"<think>.*?</think>", re.DOTALL)


def chat_template_of(tokenizer) -> str:
    """The tokenizer's own chat template, else the built-in Qwen3 one the student was trained with."""
    from tide_megatron.align.templates import QWEN3_TEMPLATE

    own = getattr(tokenizer, "chat_template", None)
    return own if isinstance(own, str) and own else QWEN3_TEMPLATE


def render_chat(tokenizer, messages: Sequence[dict], add_generation_prompt: bool = True) -> str:
    """``messages`` as prompt text: chat template, thinking disabled, empty think block, prefill last."""
    history = [dict(m) for m in messages]
    prefill = ""
    if not add_generation_prompt and history and history[-1].get("role") == "assistant":
        prefill = history.pop()["content"]
    text = tokenizer.apply_chat_template(history, chat_template=chat_template_of(tokenizer), tokenize=False,
                                         add_generation_prompt=True, enable_thinking=False)
    if "<think>" in tokenizer.get_vocab() and "</think>" not in text:
        text += THINK_BLOCK
    return text + prefill


def stop_token_ids(tokenizer, eos_id: int) -> tuple[int, ...]:
    """Ids besides eos that end a completion: those of :data:`STOP_TOKENS` the vocabulary has."""
    vocab = tokenizer.get_vocab()
    return tuple(sorted({vocab[t] for t in STOP_TOKENS if t in vocab} - {eos_id}))


def decode_completion(tokenizer, ids: Sequence[int]) -> str:
    """Completion ids -> text without think spans, whether ``<think>`` is one (special) token or text.

    Spans between the ``<think>`` and ``</think>`` ids are dropped before decoding (a tokenizer may
    mark them special, and decoding without special tokens would lose the tags but keep the
    thoughts); the decoded text then goes through :func:`strip_think`.
    """
    vocab = tokenizer.get_vocab()
    open_id, close_id = vocab.get("<think>"), vocab.get("</think>")
    kept: list[int] = []
    inside = False
    for tok in ids:
        if tok == open_id:
            inside = True
        elif tok == close_id:
            kept = kept if inside else []  # a stray close ends thoughts begun in the prompt
            inside = False
        elif not inside:
            kept.append(tok)
    return strip_think(tokenizer.decode(kept, skip_special_tokens=True))


def strip_think(text: str) -> str:
    """Drop every ``<think>...</think>`` span; a stray ``</think>`` drops what precedes it and an
    unclosed ``<think>`` what follows it (an unfinished thought is no answer)."""
    text = _THINK_SPAN.sub("", text)
    if "</think>" in text:
        text = text.rsplit("</think>", 1)[1]
    return text.split("<think>", 1)[0]


def cut_at_stops(text: str, stops: Iterable[str]) -> str:
    """``text`` up to the earliest occurrence of any non-empty stop string."""
    cut = min((i for i in (text.find(s) for s in stops if s) if i >= 0), default=len(text))
    return text[:cut]

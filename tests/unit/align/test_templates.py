"""Chat templates, prompt-masked labels and content ranges (spec §1.1-1.2, §5.1) on real tokenizers."""

import pytest

from tide_megatron.align.templates import (
    IGNORE_INDEX,
    SampleError,
    render,
    render_conversation,
    resolve_template,
    validate_messages,
)

MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": "4"},
    {"role": "user", "content": "And 3+3?"},
    {"role": "assistant", "content": "It is 6."},
]


def test_qwen3_builtin_thinking_disabled(tok):
    t = tok("qwen2")
    tpl = resolve_template("qwen3", t, "qwen3")
    prompt = render(t, tpl, MESSAGES[:-1], add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\nIt is 6."[: -len("It is 6.")])
    full = render(t, tpl, MESSAGES)
    assert full.startswith(prompt) and full == prompt + "It is 6.<|im_end|>\n"
    # earlier assistant turns carry no think block
    assert "<|im_start|>assistant\n4<|im_end|>" in full


def test_llada2_builtin_format(tok):
    t = tok("gpt-2")
    tpl = resolve_template("auto", t, "llada2")  # gpt-2 has no template of its own
    full = render(t, tpl, MESSAGES[1:3])
    assert full == ("<role>SYSTEM</role>detailed thinking off<|role_end|><role>HUMAN</role>What is 2+2?<|role_end|>"
                    "<role>ASSISTANT</role>4<|role_end|>")
    assert render(t, tpl, MESSAGES[:1], add_generation_prompt=True) == (
        "<role>SYSTEM</role>Be brief.<|role_end|><role>ASSISTANT</role>")


def test_auto_prefers_the_tokenizers_own_template(tok):
    t = tok("qwen2")
    assert resolve_template("auto", t, "qwen3") == t.chat_template
    with pytest.raises(ValueError, match="own: tokenizer 'gpt-2' has no chat template"):
        resolve_template("own", tok("gpt-2"), "llada2")
    with pytest.raises(ValueError, match="chat template 'nope'"):
        resolve_template("nope", t, "qwen3")


def test_labels_mask_the_prompt_and_content_spans(tok):
    t = tok("qwen2")
    conv = render_conversation(t, resolve_template("qwen3", t, "qwen3"), MESSAGES)
    prompt_ids = t.encode(render(t, resolve_template("qwen3", t, "qwen3"), MESSAGES[:-1], True)).ids
    assert conv.prompt_len == len(prompt_ids) and conv.ids[: conv.prompt_len] == prompt_ids
    labels = conv.labels()
    assert labels[: conv.prompt_len] == [IGNORE_INDEX] * conv.prompt_len
    assert labels[conv.prompt_len :] == conv.ids[conv.prompt_len :]
    assert t.decode(conv.ids[conv.prompt_len :]) == "It is 6.<|im_end|>\n"
    for m, (a, b) in zip(MESSAGES, conv.content_spans):
        assert conv.text[a:b] == m["content"]
    a, b = conv.token_span(4)
    assert t.decode(conv.ids[a:b]) == "It is 6."
    # "4" appears in "2+2?" earlier: the sequential search must find the assistant's own "4"
    a, b = conv.content_spans[2]
    assert conv.text[a - len("assistant\n"):a] == "assistant\n"


def test_short_content_is_not_found_inside_template_text(tok):
    t = tok("gpt-2")
    msgs = [{"role": "user", "content": "Pick A or B."}, {"role": "assistant", "content": "A"}]
    conv = render_conversation(t, resolve_template("llada2", t, "llada2"), msgs)
    a, b = conv.content_spans[1]
    # a plain search from the previous match would stop in "<role>ASSISTANT</role>"
    assert conv.text[a - len("</role>"):b] == "</role>A" and conv.text[b:] == "<|role_end|>"
    msgs = [{"role": "user", "content": "user"}, {"role": "assistant", "content": "assistant"}]
    conv = render_conversation(t, resolve_template("qwen3", t, "qwen3"), msgs)
    assert [conv.text[a - 1:b + 10] for a, b in conv.content_spans] == ["\nuser<|im_end|>", "\nassistant<|im_end|>"]


def test_content_not_found_in_template(tok):
    t = tok("gpt-2")
    shouting = "{%- for m in messages -%}{{ m['content'] | upper }}{%- endfor -%}"
    with pytest.raises(SampleError) as e:
        render_conversation(t, shouting, [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}])
    assert e.value.reason == "content_not_in_template"


def test_template_refusal_is_a_sample_error(tok, tmp_path):
    t = tok("gpt-2")
    strict = "{%- if messages[0]['role'] != 'user' -%}{{ raise_exception('first message must be user') }}{%- endif -%}x"
    with pytest.raises(SampleError) as e:
        render(t, strict, [{"role": "assistant", "content": "a"}])
    assert e.value.reason == "template_error" and "first message must be user" in str(e.value)


@pytest.mark.parametrize("messages,reason", [
    ([], "no_messages"),
    ([{"content": "x"}], "missing_role"),
    ([{"role": "bot", "content": "x"}], "unknown_role"),
    ([{"role": "user", "content": 3}], "bad_content"),
    ([{"role": "assistant", "content": "a"}, {"role": "user", "content": "b"}], "last_not_assistant"),
])
def test_message_validation(messages, reason):
    with pytest.raises(SampleError) as e:
        validate_messages(messages)
    assert e.value.reason == reason

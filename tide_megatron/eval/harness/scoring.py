"""Document processing and scoring for our harness task YAMLs (``tasks/``), referenced by ``!function``.

- ``hellaswag_gen`` / ``mmlu_generative_dream``: the question and its four options labelled A-D,
  ``Answer:``; the model generates the letter (3 new tokens, §7.2), scored by exact match of the
  first standalone A-D letter of the output against the gold letter.
- ``humaneval`` / ``humaneval_instruct`` / ``mbpp_instruct``: completions are executed in the sandbox
  of ``eval/humaneval.py`` (its public functions; the harness's own unsafe-code switch gates these
  tasks before anything is generated), and pass@1 is the fraction of programs whose tests pass.
"""

from __future__ import annotations

import os
import re
from concurrent.futures import ThreadPoolExecutor

from tide_megatron.eval.humaneval import execute_completions, run_program

LETTERS = ("A", "B", "C", "D")
EXEC_TIMEOUT_S = float(os.environ.get("TIDE_EXEC_TIMEOUT_S", "10"))


def _options(choices) -> str:
    return "\n".join(f"{letter}. {str(choice).strip()}" for letter, choice in zip(LETTERS, choices))


def _clean_hellaswag(text: str) -> str:
    """HellaSwag's WikiHow rows carry ``[title]``/``[step]`` markers: drop them and doubled spaces."""
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return re.sub(r"  +", " ", text).strip()


def hellaswag_docs(dataset):
    """Rowan/hellaswag rows (ctx_a, ctx_b, activity_label, endings, label) -> prompt + gold letter."""
    def one(doc):
        context = _clean_hellaswag(f"{doc['activity_label']}: {doc['ctx_a']} {doc['ctx_b'].capitalize()}")
        endings = [_clean_hellaswag(e) for e in doc["endings"]]
        prompt = (f"Choose the most plausible continuation of the text.\n\n{context}\n\n{_options(endings)}\n"
                  f"Answer:")
        return {"prompt": prompt, "answer": LETTERS[int(doc["label"])]}

    return dataset.map(one)


def mmlu_docs(dataset):
    """cais/mmlu rows (question, subject, choices, answer index) -> prompt + gold letter."""
    def one(doc):
        subject = str(doc.get("subject", "")).replace("_", " ")
        head = f"The following is a multiple choice question about {subject}.\n\n" if subject else ""
        prompt = f"{head}{doc['question'].strip()}\n{_options(doc['choices'])}\nAnswer:"
        return {"prompt": prompt, "answer": LETTERS[int(doc["answer"])]}

    return dataset.map(one)


def _first_text(resp) -> str:
    return resp[0] if isinstance(resp, (list, tuple)) and resp else (resp if isinstance(resp, str) else "")


def _ran(completion: str, passed: bool, result: str) -> dict:
    """One filtered response (the filter also takes the first of the repeats): what ran and how it ended."""
    return {"completion": completion, "passed": bool(passed), "result": result}


def _run_humaneval(resps, docs, cut_at_fence: bool) -> list[dict]:
    completions = [_first_text(r) for r in resps]
    if cut_at_fence:  # the instruct prompt opened a ```python block: the function body ends at its fence
        completions = [c.split("```", 1)[0] for c in completions]
    results = execute_completions(list(docs), completions, timeout_s=EXEC_TIMEOUT_S)
    return [_ran(c, r.passed, r.result) for c, r in zip(completions, results)]


def humaneval_execute(resps, docs):
    """Filter: run prompt + completion + tests for each HumanEval doc (the ``humaneval`` prompt)."""
    return _run_humaneval(resps, docs, cut_at_fence=False)


def humaneval_instruct_execute(resps, docs):
    """Filter: as :func:`humaneval_execute`, the completion cut at the closing code fence."""
    return _run_humaneval(resps, docs, cut_at_fence=True)


def mbpp_program(doc: dict, completion: str) -> str:
    """The generated code (up to its closing fence) followed by the row's first three test asserts."""
    return completion.split("```", 1)[0] + "\n" + "\n".join(doc["test_list"][:3]) + "\n"


def mbpp_execute(resps, docs):
    """Filter: run each MBPP completion against its tests in the sandbox, in parallel."""
    completions = [_first_text(r) for r in resps]
    programs = [mbpp_program(d, c) for d, c in zip(docs, completions)]
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        runs = list(pool.map(lambda p: run_program(p, timeout_s=EXEC_TIMEOUT_S), programs))
    return [_ran(c, ok, why) for c, (ok, why) in zip(completions, runs)]


def pass_at_1(doc: dict, results) -> dict:
    """process_results of the code tasks: 1.0 when the executed program passed."""
    (ran,) = results
    return {"pass@1": float(ran["passed"])}


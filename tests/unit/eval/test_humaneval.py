"""HumanEval harness: sandboxed execution and pass@1 against the package's own canonical solutions."""

import pytest

from tide_megatron.eval.humaneval import (instruct_prompt, load_problems, run_humaneval, run_program,
                                          truncate_completion)


class CanonicalSolutionModel:
    """Answers each HumanEval prompt with that problem's canonical solution."""

    def __init__(self, problems):
        self.answers = {p["prompt"]: p["canonical_solution"] for p in problems}

    def complete(self, prompts):
        return [self.answers[p] for p in prompts]


class EmptyModel:
    def complete(self, prompts):
        return ["" for _ in prompts]


@pytest.mark.slow
def test_canonical_solutions_pass_all_164_and_empty_completions_pass_none():
    problems = load_problems()
    assert len(problems) == 164
    good = run_humaneval(CanonicalSolutionModel(problems), problems, batch_size=64, workers=2)
    assert (good.num_passed, good.num_problems, good.pass_at_1) == (164, 164, 1.0)
    empty = run_humaneval(EmptyModel(), problems, batch_size=64, workers=2)
    assert (empty.num_passed, empty.pass_at_1) == (0, 0.0)
    assert all(r.result.startswith("failed") for r in empty.results)


def test_sandbox_catches_early_exit_timeouts_memory_and_destructive_calls():
    assert run_program("assert 1 + 1 == 2\n") == (True, "passed")
    assert run_program("import sys\nsys.exit(0)\nassert False\n")[0] is False  # exit before the tests ran
    assert run_program("import os\nos._exit(0)\n")[0] is False
    assert run_program("while True:\n    pass\n", timeout_s=1.0) == (False, "timed out")
    ok, why = run_program("x = bytearray(4 << 30)\n", memory_mb=512)
    assert not ok and "MemoryError" in why
    ok, why = run_program("import os\nos.system('echo hi')\n")
    assert not ok and "TypeError" in why  # reliability_guard sets os.system to None


def test_truncation_and_instruct_prompt():
    assert truncate_completion("    return x\n\ndef other():\n    pass") == "    return x\n"
    assert truncate_completion("    return x\n```\nMore text", ("```",)) == "    return x\n"
    assert truncate_completion("<think>\nplan\n</think>    return x\n") == "    return x\n"
    prob = load_problems(limit=1)[0]
    prompt = instruct_prompt(prob, chat=lambda user: f"<user>{user}</user><assistant>")
    # the harness's humaneval_instruct text: the prefilled header ends with the prompt and one newline
    assert prompt.startswith("<user>") and prompt.endswith("```python\n" + prob["prompt"] + "\n")
    with pytest.raises(FileNotFoundError, match="nowhere.jsonl"):
        load_problems("nowhere.jsonl")

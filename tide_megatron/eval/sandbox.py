"""Run one untrusted Python program (a model's HumanEval completion with its tests) contained, and score it.

Three processes, so that the program can neither outlive its deadline, nor hold our pipes, nor forge a pass:

* this process starts the supervisor (``sandbox_supervisor.py``, trusted, its own session) and reads one JSON
  line from it; the program never sees that pipe;
* the supervisor is a child subreaper: it starts the harness with resource limits (address space, CPU time,
  file size, no core; no new processes), output to files in the temp dir, kills the whole tree at the
  deadline (a ``fork`` + ``setsid`` grandchild included) and decides the verdict;
* the harness (``sandbox_harness.py``) runs the program under ``reliability_guard`` and an audit hook, and
  writes back the supervisor's nonce (received on a descriptor it closes before the program starts) only
  when the program ran to its end.

With ``bwrap`` (Debian ``bubblewrap``) installed and usable, the harness also runs in a read-only view of
the filesystem (only the temp dir writable), with no network and its own PID namespace. Without it the
Python-level guards are all there is: `sandbox_description` says which, and the first run warns once.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

SUPERVISOR = Path(__file__).with_name("sandbox_supervisor.py")
HARNESS = Path(__file__).with_name("sandbox_harness.py")
FILE_LIMIT_BYTES = 1 << 24
SUPERVISOR_GRACE_S = 10.0  # beyond the program's deadline, before this process gives up on the supervisor
_warned = False


@dataclass
class SandboxResult:
    passed: bool
    timed_out: bool
    status: Optional[int]  # the harness's exit code (negative: killed by that signal); None if it was killed late
    stderr: str  # the tail of the program's stderr


@functools.lru_cache(maxsize=1)
def bwrap_usable() -> bool:
    """``bwrap`` is installed and can create its namespaces here (containers often forbid it)."""
    exe = shutil.which("bwrap")
    if not exe:
        return False
    try:
        probe = subprocess.run([exe, *_bwrap_flags("/"), "--", "/bin/true"], capture_output=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return probe.returncode == 0


def sandbox_description(bwrap: Optional[bool] = None) -> str:
    """One line saying how programs are contained (for logs and reports)."""
    if _use_bwrap(bwrap):
        return "bwrap (read-only filesystem, no network, own PID namespace) + supervisor + guarded harness"
    if bwrap_usable():
        why = "bwrap is turned off"
    elif shutil.which("bwrap") is None:
        why = "bwrap is not installed (Debian: apt-get install bubblewrap)"
    else:
        why = "bwrap is installed but cannot create namespaces here"
    return (f"supervisor + guarded harness only: {why}, so programs see the real filesystem (writes outside "
            f"their temp dir are refused by Python-level guards only) and the network")


def _use_bwrap(bwrap: Optional[bool]) -> bool:
    if bwrap is None:
        return bwrap_usable()
    if bwrap and not bwrap_usable():
        raise RuntimeError("bwrap was requested for the HumanEval sandbox but is not installed or not usable")
    return bwrap


def _interpreter_paths_under_tmp() -> list[str]:
    """The interpreter, its environment (a venv) and the harness, where they live under /tmp: the private /tmp
    would hide them (e.g. a checkout and its .venv cloned into /tmp), so they are bound back read-only."""
    paths = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, os.path.dirname(sys.executable),
                                           os.path.dirname(os.path.realpath(sys.executable)), HARNESS.parent)}
    under = sorted(p for p in paths if p == "/tmp" or p.startswith("/tmp/"))
    return [p for p in under if not any(p != q and p.startswith(q + "/") for q in under)]


def _bwrap_flags(workdir: str) -> list[str]:
    flags = ["--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp"]
    for path in _interpreter_paths_under_tmp():
        flags += ["--ro-bind", path, path]
    if workdir != "/":
        flags += ["--bind", workdir, workdir, "--chdir", workdir]
    return flags + ["--unshare-all", "--die-with-parent", "--new-session"]


def run_sandboxed(program: str, timeout_s: float = 10.0, memory_mb: int = 1024,
                  bwrap: Optional[bool] = None) -> SandboxResult:
    """Run ``program`` contained (see the module docstring); ``bwrap`` None = use it when usable."""
    global _warned
    use_bwrap = _use_bwrap(bwrap)
    if not use_bwrap and not _warned:
        _warned = True
        print(f"warning: HumanEval sandbox: {sandbox_description(False)}", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(prefix="tide-humaneval-") as tmp:
        workdir = os.path.realpath(tmp)
        Path(workdir, "program.py").write_text(program, encoding="utf-8")
        harness = [sys.executable, "-I", str(HARNESS)]
        return supervise(bwrap_argv(workdir, harness) if use_bwrap else harness, workdir, timeout_s, memory_mb)


def bwrap_argv(workdir: str, command: list[str]) -> list[str]:
    """``command`` inside bwrap: everything read-only but ``workdir``, a private /tmp, no network, own PIDs."""
    return [shutil.which("bwrap") or "bwrap", *_bwrap_flags(workdir), "--", *command]


def supervise(argv: list[str], workdir: str, timeout_s: float, memory_mb: int = 1024) -> SandboxResult:
    """Run ``argv`` (the harness, or any command) under the supervisor in ``workdir``; collect its verdict."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": workdir, "TMPDIR": workdir,
           "LANG": "C.UTF-8", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    settings = {"argv": argv, "env": env, "timeout_s": timeout_s, "cpu_s": int(timeout_s) + 1,
                "memory_bytes": memory_mb << 20, "file_bytes": FILE_LIMIT_BYTES}
    proc = subprocess.Popen([sys.executable, "-I", str(SUPERVISOR), json.dumps(settings)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            cwd=workdir, env=env, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout_s + SUPERVISOR_GRACE_S)
    except subprocess.TimeoutExpired:  # the supervisor itself is stuck: kill its session, read nothing more
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        for pipe in (proc.stdout, proc.stderr):
            pipe.close()
        return SandboxResult(False, True, None, "")
    stderr = Path(workdir, "stderr.txt")
    tail = stderr.read_bytes()[-4000:].decode(errors="replace") if stderr.is_file() else ""
    try:
        verdict = json.loads(out.decode().strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise RuntimeError(f"HumanEval sandbox supervisor failed (exit {proc.returncode}): "
                           f"{err.decode(errors='replace')[-2000:]}") from None
    return SandboxResult(bool(verdict["passed"]), bool(verdict["timed_out"]), verdict["status"], tail)

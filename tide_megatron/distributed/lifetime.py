"""Helper processes (DataLoader workers, checkpoint writers, preprocessing workers) live and die with their parent.

SLURM and torchrun signal every process of a job (``kill -TERM -- -PGID``). A helper that dies of that signal
breaks the preemption checkpoint its parent is about to write, so helpers ignore the job's signals and leave
them to the parent. A helper that outlives its parent (``kill -9``, a crash) is an orphan holding memory and
pipes, so helpers also ask the kernel to kill them when their parent exits (Linux ``PR_SET_PDEATHSIG``; a
parent-pid watchdog thread elsewhere).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import threading
import time
from typing import Iterator, Optional

# What a scheduler sends to every process of a job before it stops it (SLURM: TERM, or USR1 with --signal).
JOB_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
_PR_SET_PDEATHSIG = 1
_WATCHDOG_INTERVAL_S = 1.0

_tie_children = 0  # > 0 while `children_tied_to_this_process` is active; a forked child inherits the value
_forking_pid = 0  # set in the forking process just before each fork
_parent_at_fork = 0  # in a forked child: the pid of the process that forked it
_held_signals: list[int] = []  # job signals received inside `job_signals_held`, oldest first


def ignore_job_signals() -> None:
    """This process ignores SIGTERM / SIGUSR1: its parent handles preemption and stops it when done."""
    for sig in JOB_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


@contextlib.contextmanager
def job_signals_held() -> Iterator[None]:
    """A job signal that arrives inside this block is kept instead of ending the process, until the training loop
    takes it (`take_held_job_signal`) and checkpoints at its first step boundary: a preemption while the models
    are built or a checkpoint is loaded is then a clean stop, not a death by SIGTERM."""
    previous = {sig: signal.signal(sig, _hold_job_signal) for sig in JOB_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _held_signals.clear()


def _hold_job_signal(signum: int, frame: object) -> None:
    _held_signals.append(signum)


def take_held_job_signal() -> Optional[int]:
    """The first job signal held by `job_signals_held` and not yet taken, else None."""
    return _held_signals.pop(0) if _held_signals else None


def die_with_parent(parent_pid: int | None = None) -> None:
    """Have this process killed (SIGKILL) as soon as its parent exits, however the parent ends.

    ``parent_pid`` (default: the process that forked this one) must still be the parent, else exit at once.
    """
    parent = parent_pid or _parent_at_fork or os.getppid()
    if not _set_pdeathsig(signal.SIGKILL):
        threading.Thread(target=_watch_parent, args=(parent,), name="die-with-parent", daemon=True).start()
    if os.getppid() != parent:  # the parent died before the kernel was told to watch it
        os._exit(1)


def _set_pdeathsig(sig: int) -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:  # the process's own symbols include libc's prctl (find_library would start a subprocess)
        return ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(_WATCHDOG_INTERVAL_S)
    os._exit(1)


def make_helper() -> None:
    """Both at once: ignore the job's signals and die with the parent (call first thing in a helper)."""
    ignore_job_signals()
    die_with_parent()


@contextlib.contextmanager
def children_tied_to_this_process() -> Iterator[None]:
    """Processes forked inside this block (e.g. dist_checkpointing's writers, which take no init hook)
    become helpers: they ignore the job's signals and die with this process."""
    global _tie_children
    _tie_children += 1
    try:
        yield
    finally:
        _tie_children -= 1


def _before_fork() -> None:
    global _forking_pid
    _forking_pid = os.getpid()


def _after_fork_in_child() -> None:
    global _parent_at_fork
    _parent_at_fork = _forking_pid
    if _tie_children > 0:
        make_helper()


os.register_at_fork(before=_before_fork, after_in_child=_after_fork_in_child)

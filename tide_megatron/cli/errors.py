"""How every ``tide-*`` command fails: one line on stderr naming what was wrong, and a non-zero exit status.

    @cli_errors("tide-train")
    def main(argv=None) -> int: ...

Bad input (a missing or corrupt file, a wrong field or flag: `ValueError`, `OSError`, the project's
`CheckpointError` and `ConfigError`) exits 2 with its message; anything else exits 1 with the exception's type
and first line. An error raised in a DataLoader worker is reported by its own message, not torch's wrapper.
The traceback is printed only with ``--debug`` (accepted by every command, anywhere on the command line) or
``TIDE_DEBUG=1``. torch's ``CheckpointException`` is a `BaseException`, so it is caught here explicitly;
Ctrl-C exits 130 without a traceback.
"""

from __future__ import annotations

import functools
import os
import sys
import traceback
from typing import Callable, Optional, Sequence

DEBUG_FLAG = "--debug"
DEBUG_ENV = "TIDE_DEBUG"
EXIT_BAD_INPUT = 2
EXIT_FAILURE = 1
EXIT_INTERRUPTED = 130
# Bad input: the message already names the file, field or flag and what was expected.
INPUT_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError)

Main = Callable[[Optional[Sequence[str]]], int]


def debug_enabled() -> bool:
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no", "off")


def cli_errors(prog: str) -> Callable[[Main], Main]:
    """Decorate a console entry point ``main(argv) -> exit status`` with the project's error reporting."""

    def decorate(main: Main) -> Main:
        @functools.wraps(main)
        def wrapper(argv: Optional[Sequence[str]] = None) -> int:
            args = list(sys.argv[1:] if argv is None else argv)
            if DEBUG_FLAG in args:
                args = [a for a in args if a != DEBUG_FLAG]
                os.environ[DEBUG_ENV] = "1"  # also seen by child processes (torchrun ranks, workers)
            try:
                return main(args)
            except KeyboardInterrupt:
                print(f"{prog}: interrupted", file=sys.stderr, flush=True)
                return EXIT_INTERRUPTED
            except SystemExit:
                raise
            except BaseException as err:  # noqa: BLE001 - torch's CheckpointException derives from BaseException
                return report(prog, err)

        return wrapper

    return decorate


def report(prog: str, err: BaseException) -> int:
    """Print ``err`` the project's way and return the exit status it maps to."""
    if debug_enabled():
        traceback.print_exception(err)
    cause = _own_error(err)
    print(f"{prog}: error: {_rank_prefix()}{describe(cause)}", file=sys.stderr, flush=True)
    return EXIT_BAD_INPUT if is_bad_input(cause) else EXIT_FAILURE


def is_bad_input(err: BaseException) -> bool:
    # By name: importing the project's error classes would import megatron-core, which a broken install
    # (the very error being reported) may not allow.
    return isinstance(err, INPUT_ERRORS) or any(c.__name__ in ("CheckpointError", "ConfigError")
                                                for c in type(err).__mro__)


def _own_error(err: BaseException) -> BaseException:
    """torch's CheckpointException carries each failing rank's own error: report the first one."""
    failures = getattr(err, "failures", None)
    if isinstance(failures, dict) and failures:
        inner = next(iter(failures.values()))
        inner = inner[0] if isinstance(inner, tuple) else inner
        if isinstance(inner, BaseException):
            return _own_error(inner)
    return err


def describe(err: BaseException) -> str:
    """The message of an input error; type, first line and a pointer to the traceback for anything else."""
    text = _unwrap_worker_error(str(err).strip())
    if is_bad_input(err) and text:
        return text
    first = (text.splitlines() or [""])[0][:500]
    hint = "" if debug_enabled() else f" (rerun with {DEBUG_FLAG} or {DEBUG_ENV}=1 for the traceback)"
    return f"{type(err).__name__}: {first}{hint}"


def _unwrap_worker_error(text: str) -> str:
    """torch re-raises a worker's error as "Caught X in DataLoader worker process N. Original Traceback ...":
    the original message is the last line, after its type name."""
    if not (text.startswith("Caught ") and "Original Traceback" in text):
        return text
    last = text.splitlines()[-1]
    head, sep, message = last.partition(": ")
    return message if sep and head.replace(".", "").replace("_", "").isalnum() else last


def _rank_prefix() -> str:
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    return f"[rank {os.environ.get('RANK', '?')}] " if world > 1 else ""

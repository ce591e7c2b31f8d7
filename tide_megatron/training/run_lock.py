"""One training run per output directory: an exclusive advisory lock held for the run's life.

Global rank 0 takes ``flock(LOCK_EX | LOCK_NB)`` on ``<dir>/.tide-train.lock`` for the output directory (and the
checkpoint directory when it lies elsewhere) and writes its host and pid there; a second run pointed at the same
directory fails at start-up with an error naming that holder, before it reads or writes a checkpoint. The kernel
drops the lock when the process exits, however it exits, so a killed run never leaves a stale lock behind.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Iterable, Optional

import torch.distributed as dist

LOCK_FILE = ".tide-train.lock"


class RunDirectoryLocked(OSError):
    """Another run holds the lock on this run directory; the message names it and its holder."""


# Locks this process holds: real path -> [descriptor, holders]. The lock is per process (what it protects
# is the directory against another run), so a second trainer of the same process shares it.
_HELD: dict[str, list] = {}


class RunLock:
    """The locks of one run (held on global rank 0 only); `release` or process exit frees them."""

    def __init__(self, directories: Optional[list[str]] = None) -> None:
        self._directories = directories or []

    @classmethod
    def acquire(cls, directories: Iterable[str]) -> "RunLock":
        """Lock every directory or raise `RunDirectoryLocked` on every rank (collective when distributed)."""
        held: list[str] = []
        error = None
        if not dist.is_initialized() or dist.get_rank() == 0:
            try:
                for directory in _outermost(directories):
                    if _lock(directory):
                        held.append(directory)
            except RunDirectoryLocked as err:
                cls(held).release()
                held, error = [], str(err)
        if dist.is_initialized() and dist.get_world_size() > 1:
            shared = [error]
            dist.broadcast_object_list(shared, src=0)
            error = shared[0]
        if error is not None:
            raise RunDirectoryLocked(error)
        return cls(held)

    def release(self) -> None:
        for directory in self._directories:
            entry = _HELD.get(directory)
            if entry is None:
                continue
            entry[1] -= 1
            if entry[1] == 0:
                del _HELD[directory]
                try:
                    os.ftruncate(entry[0], 0)  # the holder's line goes with the lock
                except OSError:
                    pass
                os.close(entry[0])  # closing the descriptor drops the flock
        self._directories = []

    def __del__(self) -> None:
        if getattr(self, "_directories", None):
            self.release()


def _outermost(directories: Iterable[str]) -> list[str]:
    """The distinct directories, without those inside another one (a lock there covers them)."""
    paths = sorted({os.path.realpath(d) for d in directories if d})
    return [p for p in paths if not any(p != q and p.startswith(q.rstrip(os.sep) + os.sep) for q in paths)]


def _lock(directory: str) -> bool:
    """Take (or share, within this process) the lock of ``directory``; False where the filesystem has none."""
    if directory in _HELD:
        _HELD[directory][1] += 1
        return True
    Path(directory).mkdir(parents=True, exist_ok=True)
    path = os.path.join(directory, LOCK_FILE)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        holder = _read_holder(fd)
        os.close(fd)
        if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            print(f"warning: {path}: file locks are not supported here ({err}); one run per directory is "
                  f"not enforced", file=sys.stderr)
            return False
        raise RunDirectoryLocked(_busy_message(directory, holder)) from None
    os.ftruncate(fd, 0)
    os.write(fd, json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "since": time.time(),
                             "argv": sys.argv}).encode())
    _HELD[directory] = [fd, 1]
    return True


def _read_holder(fd: int) -> dict:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        return json.loads(os.read(fd, 65536).decode() or "{}")
    except (OSError, ValueError):
        return {}


def _busy_message(directory: str, holder: dict) -> str:
    since = holder.get("since")
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(since)) if isinstance(since, (int, float)) else "?"
    return (f"{directory} is in use by another tide-train run (host {holder.get('host', '?')}, pid "
            f"{holder.get('pid', '?')}, started {started}); two runs in one directory would overwrite each other's "
            f"checkpoints. Wait for it to finish, stop it, or choose another output_dir")

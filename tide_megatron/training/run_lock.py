"""One training run per output directory: an exclusive advisory lock held for the run's life.

Global rank 0 takes ``flock(LOCK_EX | LOCK_NB)`` on ``<dir>/.tide-train.lock`` for the output directory (and the
checkpoint directory when it lies elsewhere) and writes its host and pid there; a second run pointed at the same
directory fails at start-up with an error naming that holder, before it reads or writes a checkpoint. The kernel
drops the lock when the process exits, however it exits, so a killed run never leaves a stale lock behind.
"""

from __future__ import annotations

import errno
import fcntl
import gc
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


class RunLock:
    """The locks of one run (held on global rank 0 only); `release` or process exit frees them."""

    def __init__(self, fds: Optional[dict[str, int]] = None) -> None:
        self._fds = fds or {}

    @classmethod
    def acquire(cls, directories: Iterable[str]) -> "RunLock":
        """Lock every directory or raise `RunDirectoryLocked` on every rank (collective when distributed)."""
        fds: dict[str, int] = {}
        error = None
        if not dist.is_initialized() or dist.get_rank() == 0:
            try:
                for directory in _outermost(directories):
                    fd = _lock(directory)
                    if fd is not None:
                        fds[directory] = fd
            except RunDirectoryLocked as err:
                for fd in fds.values():
                    os.close(fd)
                fds, error = {}, str(err)
        if dist.is_initialized() and dist.get_world_size() > 1:
            shared = [error]
            dist.broadcast_object_list(shared, src=0)
            error = shared[0]
        if error is not None:
            raise RunDirectoryLocked(error)
        return cls(fds)

    def release(self) -> None:
        for fd in self._fds.values():
            try:
                os.ftruncate(fd, 0)  # the holder's line goes with the lock
            except OSError:
                pass
            os.close(fd)  # closing the descriptor drops the flock
        self._fds.clear()

    def __del__(self) -> None:
        if getattr(self, "_fds", None):
            self.release()


def _outermost(directories: Iterable[str]) -> list[str]:
    """The distinct directories, without those inside another one (a lock there covers them)."""
    paths = sorted({os.path.realpath(d) for d in directories if d})
    return [p for p in paths if not any(p != q and p.startswith(q.rstrip(os.sep) + os.sep) for q in paths)]


def _lock(directory: str) -> Optional[int]:
    """The locked descriptor of ``directory``'s lock file (None where the filesystem has no locks)."""
    Path(directory).mkdir(parents=True, exist_ok=True)
    path = os.path.join(directory, LOCK_FILE)
    for attempt in range(2):
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            holder = _read_holder(fd)
            os.close(fd)
            if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                print(f"warning: {path}: file locks are not supported here ({err}); one run per directory is "
                      f"not enforced", file=sys.stderr)
                return None
            if attempt == 0 and holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
                gc.collect()  # an earlier trainer of this process that failed to start may still hold it
                continue
            raise RunDirectoryLocked(_busy_message(directory, holder)) from None
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "since": time.time(),
                                 "argv": sys.argv}).encode())
        return fd
    raise AssertionError("unreachable")


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

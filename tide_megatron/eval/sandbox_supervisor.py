"""The trusted supervisor of one sandboxed program (run as a script, ``python -I``; standard library only).

    python -I sandbox_supervisor.py SETTINGS_JSON      (working directory: the program's temp dir)

It becomes a child subreaper, so every process the program starts stays in its tree even if it forks and
calls setsid; it starts the harness (optionally inside ``bwrap``) in its own process group with resource
limits, its stdout/stderr sent to files in the temp dir (no pipe of ours is ever held by the program), and
hands it a random nonce on a pipe the harness closes before the program runs. At the deadline or when the
harness exits it SIGKILLs the whole tree, reaps it, and prints one JSON line: passed only if the harness
exited 0 after writing back exactly that nonce (this process keeps only its hash).
"""

import hashlib
import hmac
import json
import os
import resource
import signal
import sys
import time

NONCE_BYTES = 16
NONCE_FD, VERDICT_FD = 3, 4  # as the harness sees them
_PR_SET_CHILD_SUBREAPER = 36


def _become_subreaper() -> bool:
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _descendants(root: int) -> list:
    """Every live process below ``root`` (from /proc; as a subreaper, orphans of the tree are our children)."""
    children = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                stat = fh.read().decode(errors="replace")
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()
        children.setdefault(int(fields[1]), []).append(int(entry))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _reap() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _kill_tree(group: int) -> None:
    """SIGKILL the harness's process group and every other descendant until none is left."""
    for _ in range(200):
        try:
            os.killpg(group, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        victims = _descendants(os.getpid())
        for pid in victims:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        _reap()
        if not victims:
            return
        time.sleep(0.005)


def _limits(cfg: dict) -> None:
    memory, cpu_s = int(cfg["memory_bytes"]), int(cfg["cpu_s"])
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 1))
    resource.setrlimit(resource.RLIMIT_FSIZE, (int(cfg["file_bytes"]), int(cfg["file_bytes"])))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _start(cfg: dict, nonce_r: int, verdict_w: int) -> int:
    out = os.open("stdout.txt", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    err = os.open("stderr.txt", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    null = os.open(os.devnull, os.O_RDONLY)
    pid = os.fork()
    if pid == 0:
        try:
            os.setpgid(0, 0)
            moves = [(os.dup(fd), target) for fd, target in
                     ((null, 0), (out, 1), (err, 2), (nonce_r, NONCE_FD), (verdict_w, VERDICT_FD))]
            for fd, target in moves:  # through fresh copies, so no target clobbers a source not yet moved
                os.dup2(fd, target, inheritable=True)
            os.closerange(VERDICT_FD + 1, 65536)
            _limits(cfg)
            os.execve(cfg["argv"][0], cfg["argv"], cfg["env"])
        finally:
            os._exit(127)
    for fd in (out, err, null, nonce_r, verdict_w):
        os.close(fd)
    return pid


def _read_all(fd: int, limit: int) -> bytes:
    os.set_blocking(fd, False)
    data = b""
    while len(data) <= limit:
        try:
            chunk = os.read(fd, limit + 1 - len(data))
        except BlockingIOError:
            break
        if not chunk:
            break
        data += chunk
    return data


def main() -> None:
    cfg = json.loads(sys.argv[1])
    subreaper = _become_subreaper()
    nonce = bytearray(NONCE_BYTES)
    with open("/dev/urandom", "rb", buffering=0) as fh:
        fh.readinto(nonce)
    digest = hashlib.sha256(nonce).digest()
    nonce_r, nonce_w = os.pipe()
    verdict_r, verdict_w = os.pipe()
    pid = _start(cfg, nonce_r, verdict_w)
    os.write(nonce_w, nonce)
    os.close(nonce_w)
    nonce[:] = bytes(NONCE_BYTES)  # from here on only the hash is in this process
    deadline = time.monotonic() + float(cfg["timeout_s"])
    status, timed_out = None, False
    while status is None:
        done, raw = os.waitpid(pid, os.WNOHANG)
        if done:
            status = os.waitstatus_to_exitcode(raw)
        elif time.monotonic() >= deadline:
            timed_out = True
            break
        else:
            time.sleep(0.005)
    _kill_tree(pid)
    verdict = _read_all(verdict_r, NONCE_BYTES)
    passed = (status == 0 and len(verdict) == NONCE_BYTES
              and hmac.compare_digest(hashlib.sha256(verdict).digest(), digest))
    print(json.dumps({"passed": passed, "timed_out": timed_out, "status": status, "subreaper": subreaper}),
          flush=True)


if __name__ == "__main__":
    main()

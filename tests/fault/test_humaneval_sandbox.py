"""Fault suite, item 6: the HumanEval sandbox against the escapes found in it. Each is contained and scored as
a failure, through the Python-level guards alone and, where ``bwrap`` is usable, inside it too:

* a ``fork`` + ``setsid`` grandchild that outlives the kill and holds the output pipe (a 3 s deadline took 18 s);
* reading the pass nonce and calling ``os._exit(0)`` to be scored as passed;
* writing outside the temp dir, and ``os.system``."""

import os
import subprocess
import sys
import tempfile
import time

import pytest

from tide_megatron.eval.humaneval import run_program
from tide_megatron.eval.sandbox import bwrap_argv, bwrap_usable, sandbox_description, supervise

pytestmark = pytest.mark.slow
DEADLINE_S = 3.0
MODES = [pytest.param(False, id="guards-only"),
         pytest.param(True, id="bwrap", marks=pytest.mark.skipif(not bwrap_usable(), reason="bwrap not usable here"))]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as fh:
        return fh.read().split(") ")[-1][0] != "Z"


def test_setsid_grandchild_holding_the_output_is_killed_at_the_deadline(tmp_path):
    """The supervisor on its own (a shell instead of the harness, so no Python guard is involved): the
    grandchild leaves the process group and keeps stdout open; the run still ends at its deadline."""
    workdir = tmp_path / "work"
    workdir.mkdir()
    pid_file = tmp_path / "grandchild.pid"
    script = f"setsid sh -c 'echo $$ > {pid_file}; exec sleep 60' & sleep 60"
    start = time.monotonic()
    result = supervise(["/bin/sh", "-c", script], str(workdir), timeout_s=DEADLINE_S)
    elapsed = time.monotonic() - start
    assert (result.passed, result.timed_out) == (False, True)
    assert elapsed < DEADLINE_S + 3
    grandchild = int(pid_file.read_text())
    assert not _alive(grandchild)


@pytest.mark.parametrize("bwrap", MODES)
def test_a_program_that_starts_a_setsid_grandchild_fails_within_its_deadline(bwrap, tmp_path):
    pid_file = tmp_path / "grandchild.pid"
    program = ("import os, posix, sys\n"
               "try:\n"
               "    import _posixsubprocess\n"  # the one fork route without an audit event
               "except Exception as exc:\n"
               "    print('blocked:', exc, file=sys.stderr)\n"
               "if posix.fork() == 0:\n"  # os.fork itself is None (reliability_guard)
               "    os.setsid()\n"
               f"    open({str(pid_file)!r}, 'w').write(str(os.getpid()))\n"
               "    import time; time.sleep(60)\n"
               "import time\ntime.sleep(60)\n")
    start = time.monotonic()
    ok, why = run_program(program, timeout_s=DEADLINE_S, bwrap=bwrap)
    assert not ok and why.startswith("failed: SandboxRefused: os.fork"), why
    assert time.monotonic() - start < DEADLINE_S + 3
    assert not pid_file.exists()


@pytest.mark.parametrize("bwrap", MODES)
def test_reading_the_nonce_and_exiting_0_is_a_failure(bwrap):
    program = ("import os, sys\n"
               "stolen = b''\n"
               "for fd in range(3, 64):\n"  # every descriptor the harness might still hold
               "    try:\n"
               "        stolen += os.read(fd, 64)\n"
               "    except OSError:\n"
               "        pass\n"
               "for attempt in (lambda: sys._getframe(1).f_locals, lambda: __import__('gc').get_objects()):\n"
               "    try:\n"
               "        attempt()\n"
               "    except Exception as exc:\n"
               "        print('refused:', exc, file=sys.stderr)\n"
               "for fd in range(3, 64):\n"
               "    try:\n"
               "        os.write(fd, stolen or b'0' * 16)\n"
               "    except OSError:\n"
               "        pass\n"
               "os._exit(0)\n")
    assert run_program(program, timeout_s=DEADLINE_S, bwrap=bwrap) == (
        False, "failed: exited before its tests completed (exit code 0 without the harness's verdict)")
    early = run_program("import sys\nsys.exit(0)\nassert False\n", timeout_s=DEADLINE_S, bwrap=bwrap)
    assert early == (False, "failed: SystemExit: 0")
    assert run_program("assert 1 + 1 == 2\n", timeout_s=DEADLINE_S, bwrap=bwrap) == (True, "passed")


@pytest.mark.parametrize("bwrap", MODES)
def test_writing_outside_the_temp_dir_and_os_system_fail_and_leave_nothing(bwrap, tmp_path):
    outside = tmp_path / "outside.txt"
    ok, why = run_program(f"open({str(outside)!r}, 'w').write('x')\n", timeout_s=DEADLINE_S, bwrap=bwrap)
    assert not ok and why.startswith("failed: SandboxRefused: open("), why
    ok, why = run_program(f"import os\nos.system('touch {outside}')\n", timeout_s=DEADLINE_S, bwrap=bwrap)
    assert not ok and why == "failed: TypeError: 'NoneType' object is not callable"  # reliability_guard's None
    ok, why = run_program(f"import posix\nposix.system('touch {outside}')\n", timeout_s=DEADLINE_S, bwrap=bwrap)
    assert not ok and why == "failed: SandboxRefused: os.system is not allowed in the HumanEval sandbox"
    assert not outside.exists()
    inside = "open('scratch.txt', 'w').write('ok')\nassert open('scratch.txt').read() == 'ok'\n"
    assert run_program(inside, timeout_s=DEADLINE_S, bwrap=bwrap) == (True, "passed")  # its own temp dir is fine


@pytest.mark.skipif(not bwrap_usable(), reason="bwrap not usable here")
def test_inside_bwrap_even_native_code_sees_a_read_only_filesystem_and_no_network(tmp_path):
    workdir = tmp_path / "work"
    workdir.mkdir()
    outside = tmp_path / "outside.txt"
    script = (f"touch {outside}; echo ok > inside.txt; "
              f"{sys.executable} -c 'import socket; socket.create_connection((\"1.1.1.1\", 53), 2)' "
              f"2> net.txt; exit 0")
    result = supervise(bwrap_argv(str(workdir), ["/bin/sh", "-c", script]), str(workdir), timeout_s=20)
    assert result.status == 0 and not result.passed  # a shell never hands back the nonce
    assert not outside.exists()
    assert (workdir / "inside.txt").read_text() == "ok\n"
    assert "Network is unreachable" in (workdir / "net.txt").read_text()


@pytest.mark.skipif(not bwrap_usable(), reason="bwrap not usable here")
def test_an_interpreter_environment_under_tmp_stays_visible_inside_bwrap(monkeypatch):
    """bwrap gives the program a private /tmp; a venv (or a checkout) cloned under /tmp is bound back read-only."""
    with tempfile.TemporaryDirectory(dir="/tmp", prefix="tide-venv-") as root:
        venv = os.path.join(root, "venv")
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
        monkeypatch.setattr(sys, "prefix", venv)  # what a process started from that venv has
        workdir = os.path.join(root, "work")
        os.mkdir(workdir)
        python = os.path.join(venv, "bin", "python")
        result = supervise(bwrap_argv(workdir, [python, "-c", "open('inside.txt', 'w').write('ok')"]), workdir,
                           timeout_s=20)
        assert result.status == 0, result
        assert open(os.path.join(workdir, "inside.txt")).read() == "ok"


def test_the_sandbox_says_which_containment_is_in_use():
    assert ("bwrap (read-only filesystem" in sandbox_description()) == bwrap_usable()
    assert sandbox_description(False).startswith("supervisor + guarded harness only: bwrap is ")

"""Fault suite, item 3: a disk that fills up during a save. The failed save removes its temporary directory,
the previous checkpoint stays the one to resume from, and the job exits non-zero within seconds with one line
naming the path and the bytes a checkpoint needs; low free space is warned about before it is too late.

Two ways to fill the disk: a real 1 MiB tmpfs (where this machine lets the test mount one), and a write that
raises ENOSPC inside the real save path (megatron's checkpoint writer processes)."""

import json
import re
import subprocess
import sys

import pytest

from tests.helpers.train_processes import Job, train_command, write_ce_run

pytestmark = pytest.mark.slow
TIMEOUT_S = 120
SAVE_INTERVAL = 4

# tide-train whose checkpoint writers run out of space while writing the checkpoint of step FAIL_AT_STEP.
ENOSPC_DRIVER = r"""
import errno, functools, os, sys
from megatron.core.dist_checkpointing.strategies import filesystem_async
from tide_megatron.cli.train import main

real_write_item = filesystem_async._write_item
failing = ".tmp-step_%07d" % int(os.environ["FAIL_AT_STEP"])

@functools.wraps(real_write_item)  # megatron inspects its signature
def write_item(*args, **kwargs):
    stream = next(a for a in args if hasattr(a, "write") and hasattr(a, "name"))
    if failing in str(stream.name):
        stream.write(b"\0" * 4096)  # a partial shard, as a full disk leaves it
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), stream.name)
    return real_write_item(*args, **kwargs)

filesystem_async._write_item = write_item
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    root = tmp_path_factory.mktemp("diskfull")
    return root, write_ce_run(root, steps=3 * SAVE_INTERVAL, num_workers=1,
                              checkpoint={"save_interval": SAVE_INTERVAL, "keep_last": 1})


def _assert_failed_save_left_the_previous_checkpoint(job, rc, checkpoints, tmp_dir):
    assert rc == 2, job.stderr[-3000:]
    errors = [ln for ln in job.stderr.splitlines() if ln.startswith("tide-train: error:")]
    assert len(errors) == 1, job.stderr[-3000:]
    line = errors[0]
    m = re.fullmatch(rf"tide-train: error: checkpoint save to {re.escape(str(tmp_dir))} failed: no space left on "
                     rf"device \((\d+) bytes free on {re.escape(str(checkpoints))}, a checkpoint needs about (\d+)\); "
                     rf"the partial directory was removed and the previous checkpoint "
                     rf"{re.escape(str(checkpoints / f'step_{SAVE_INTERVAL:07d}'))} is kept", line or "")
    assert m, job.stderr[-3000:]
    assert int(m.group(2)) > 100_000  # the tiny student + Adam state: ~0.6 MB
    assert "Traceback" not in job.stderr
    assert not tmp_dir.exists()
    left = sorted(p.name for p in checkpoints.iterdir() if p.name != ".tide-train.lock")  # the run lock stays
    assert left == ["latest", f"step_{SAVE_INTERVAL:07d}"]
    assert (checkpoints / "latest").read_text().strip() == f"step_{SAVE_INTERVAL:07d}"
    marker = json.loads((checkpoints / f"step_{SAVE_INTERVAL:07d}" / "tide_checkpoint.json").read_text())
    assert marker["step"] == SAVE_INTERVAL
    assert not job.survivors()


def test_enospc_inside_the_writers_removes_the_partial_save_and_keeps_the_previous_checkpoint(config):
    root, cfg = config
    out = root / "enospc"
    fail_at = 2 * SAVE_INTERVAL
    with Job([sys.executable, "-c", ENOSPC_DRIVER, *train_command(cfg, out)[3:]], FAIL_AT_STEP=str(fail_at)) as job:
        rc = job.finish(TIMEOUT_S)
    _assert_failed_save_left_the_previous_checkpoint(job, rc, out / "checkpoints",
                                                     out / "checkpoints" / f".tmp-step_{fail_at:07d}")
    # The kept checkpoint resumes.
    with Job(train_command(cfg, out, f"optim.train_steps={3 * SAVE_INTERVAL}")) as resumed:
        assert resumed.finish(TIMEOUT_S) == 0, resumed.stderr[-3000:]
    assert f"at step {SAVE_INTERVAL}/" in resumed.stdout


@pytest.fixture
def small_tmpfs(tmp_path):
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    probe = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({probe.stderr.decode().strip()}); the ENOSPC test covers the save")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_a_full_tmpfs_warns_first_then_fails_cleanly(config, small_tmpfs):
    root, cfg = config
    checkpoints = small_tmpfs / "checkpoints"
    with Job(train_command(cfg, root / "tmpfs-run", f"checkpoint.dir={checkpoints}")) as job:
        rc = job.finish(TIMEOUT_S)
    warning = f"warning: checkpoint.dir {checkpoints}: "
    assert warning in job.stderr and "the next save may fail" in job.stderr, job.stderr[-3000:]
    assert job.stderr.index(warning) < job.stderr.index("tide-train: error:")
    _assert_failed_save_left_the_previous_checkpoint(job, rc, checkpoints,
                                                     checkpoints / f".tmp-step_{2 * SAVE_INTERVAL:07d}")

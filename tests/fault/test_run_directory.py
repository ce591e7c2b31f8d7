"""Fault suite, item 4: one tide-train run per output directory. A second run pointed at a directory in use
fails at once, naming the holder's host and pid, and touches nothing; the lock goes with its process, even
with ``kill -9``; a run with another seed refuses to resume the checkpoint it finds unless
``checkpoint.resume=force``."""

import signal
import socket

import pytest

from tests.helpers.train_processes import Job, last_line, run_job, train_command, write_ce_run

pytestmark = pytest.mark.slow
TIMEOUT_S = 120
SEED = 42


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    root = tmp_path_factory.mktemp("rundir")
    return root, write_ce_run(root, steps=100000, num_workers=1, optim={"seed": SEED},
                              checkpoint={"save_interval": 2})


def test_second_run_is_refused_while_the_first_holds_the_directory_and_foreign_checkpoints_are_refused(config):
    root, cfg = config
    out = root / "run"
    with Job(train_command(cfg, out)) as first:
        first.wait_for(r"^step 3/", TIMEOUT_S)  # step_0000002 is written
        second = run_job(train_command(cfg, out), TIMEOUT_S)
        assert second.proc.returncode == 2, second.stderr[-3000:]
        line = last_line(second.stderr)
        assert line.startswith(f"tide-train: error: {out.resolve()} is in use by another tide-train run (host "
                               f"{socket.gethostname()}, pid {first.proc.pid}, started "), line
        assert first.proc.poll() is None  # the first run goes on
        first.wait_for(r"^step 5/", TIMEOUT_S)
        first.signal_group(signal.SIGKILL)  # the kernel drops the lock with the process
        first.finish(TIMEOUT_S)
    assert list((out / "checkpoints").glob("step_*/tide_checkpoint.json"))

    other_seed = run_job(train_command(cfg, out, "optim.seed=7"), TIMEOUT_S)
    assert other_seed.proc.returncode == 2, other_seed.stderr[-3000:]
    line = last_line(other_seed.stderr)
    assert "was written by a different run (seed: checkpoint 42, this run 7); refusing to resume it" in line, line
    assert "checkpoint.resume=force" in line

    with Job(train_command(cfg, out, "optim.seed=7", "checkpoint.resume=force")) as forced:
        forced.wait_for(r"^resumed from .*/step_\d{7} at step \d+/", TIMEOUT_S)
        forced.signal_group(signal.SIGTERM)
        assert forced.finish(TIMEOUT_S) == 0, forced.stderr[-3000:]
    assert not list((out / "checkpoints").glob(".tmp-*"))  # the save killed by kill -9 was cleaned up

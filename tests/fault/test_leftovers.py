"""Fault suite, item 9: nothing is left behind by a killed process. A ``kill -9`` of tide-train takes its
DataLoader workers and checkpoint writers with it (they used to stay, with a ~250 MB multiprocessing Manager),
and the hidden temporary directory of a writer killed mid-dataset is removed by the next writer."""

import os
import signal
import socket
import sys
import time

import pytest

from tests.helpers.train_processes import Job, describe, train_command, write_ce_run

pytestmark = pytest.mark.slow
TIMEOUT_S = 120


def test_kill_9_of_the_trainer_takes_its_workers_with_it(tmp_path):
    config = write_ce_run(tmp_path, steps=100000, num_workers=2, checkpoint={"save_interval": 5})
    with Job(train_command(config, tmp_path / "out")) as job:
        job.wait_for(r"^step 7/", TIMEOUT_S)  # one checkpoint written: any save-time helper has existed by now
        helpers = job.descendants()
        assert len(helpers) >= 2
        os.kill(job.proc.pid, signal.SIGKILL)  # the trainer alone, as the OOM killer or a crash would
        job.finish(TIMEOUT_S)
        survivors = job.survivors(grace=5.0)
    assert not survivors, describe(survivors)


HELPER_DRIVER = r"""
import os, sys, time
from tide_megatron.distributed.lifetime import children_tied_to_this_process
with children_tied_to_this_process():
    pid = os.fork()
if pid == 0:
    import signal
    signal.raise_signal(signal.SIGTERM)  # a job-wide SIGTERM: ignored by a helper
    time.sleep(60)
    os._exit(0)
print(pid, flush=True)
time.sleep(60)
"""


def test_a_tied_helper_ignores_the_jobs_sigterm_and_dies_with_its_parent():
    with Job([sys.executable, "-c", HELPER_DRIVER]) as job:
        child = int(job.wait_for(r"^(\d+)$", TIMEOUT_S).group(1))
        time.sleep(0.5)
        assert _alive(child)  # survived its SIGTERM
        os.kill(job.proc.pid, signal.SIGKILL)
        job.finish(TIMEOUT_S)
        deadline = time.monotonic() + 5
        while _alive(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(child)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(") ")[-1][0] != "Z"
    except FileNotFoundError:
        return False


WRITER_DRIVER = r"""
import sys, time
import numpy as np
from tide_megatron.data.indexed import DatasetWriter
with DatasetWriter(sys.argv[1], fields=("student_ids",)) as writer:
    writer.add({"student_ids": np.arange(8)})
    print("writing", flush=True)
    time.sleep(60)
"""


def test_the_temp_dir_of_a_killed_dataset_writer_is_removed_by_the_next_one(tmp_path):
    import numpy as np

    from tide_megatron.data.indexed import DatasetWriter, TideAlignedDataset

    out = tmp_path / "dataset"
    with Job([sys.executable, "-c", WRITER_DRIVER, str(out)]) as job:
        job.wait_for("^writing$", TIMEOUT_S)
        job.signal_group(signal.SIGKILL)
        job.finish(TIMEOUT_S)
    left = [p.name for p in tmp_path.iterdir() if p.name.startswith(".dataset.tmp-")]
    assert len(left) == 1 and left[0].startswith(f".dataset.tmp-{job.proc.pid}@{socket.gethostname()}-"), left
    live = tmp_path / f".dataset.tmp-{os.getpid()}@{socket.gethostname()}-abc123"  # a writer that still runs
    live.mkdir()
    with DatasetWriter(out, fields=("student_ids", "student_labels", "teacher_ids")) as writer:
        for _ in range(2):
            writer.add({f: np.arange(4) for f in ("student_ids", "student_labels", "teacher_ids")})
        writer.meta = {"student": {"vocab_size": 8}, "teacher": {"vocab_size": 8}}
    assert sorted(p.name for p in tmp_path.iterdir()) == [live.name, "dataset"]
    assert len(TideAlignedDataset(out)) == 2

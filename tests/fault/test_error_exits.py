"""Fault suite, item 1: any error ends a tide-train job within seconds, with a non-zero exit and every rank and
DataLoader worker gone (workers ignore SIGTERM, which used to leave the job waiting for them forever)."""

import shutil
import time

import numpy as np
import pytest

from tests.helpers.train_processes import Job, describe, last_line, train_command, write_ce_run

pytestmark = pytest.mark.slow
DEADLINE_S = 60  # the bound for "exits within seconds" on a busy 2-core machine
CORRUPT_FROM = 40  # samples from here on hold token ids outside the vocabulary (step 20 of an unshuffled run)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("errors")
    config = write_ce_run(root, steps=32, num_workers=2, data={"shuffle": False})
    truncated = root / "truncated"
    shutil.copytree(root / "data", truncated)
    size = (truncated / "student_ids.bin").stat().st_size
    with open(truncated / "student_ids.bin", "r+b") as fh:
        fh.truncate(size // 3)
    corrupt = root / "corrupt"
    shutil.copytree(root / "data", corrupt)
    ids = np.fromfile(corrupt / "student_ids.bin", dtype=np.int32)
    offsets = np.cumsum([0] + [len(s) for s in _sample_lengths(root / "data")])
    ids[offsets[CORRUPT_FROM]:] = 10**6
    ids.tofile(corrupt / "student_ids.bin")
    return root, config


def _sample_lengths(data):
    from tide_megatron.data.indexed import TideAlignedDataset

    ds = TideAlignedDataset(data)
    return [ds[i]["student_ids"] for i in range(len(ds))]


def _run_to_failure(argv):
    with Job(argv) as job:
        start = time.monotonic()
        rc = job.finish(DEADLINE_S)
        elapsed = time.monotonic() - start
        survivors = job.survivors()
        seen = len(job._seen)
    return job, rc, elapsed, survivors, seen


def test_truncated_bin_is_one_line_naming_the_file_and_nothing_is_left(run):
    root, config = run
    job, rc, elapsed, survivors, _ = _run_to_failure(train_command(config, root / "out-truncated",
                                                                   f"data.train={root / 'truncated'}"))
    assert rc == 2, job.stderr[-3000:]
    assert last_line(job.stderr) == (f"tide-train: error: {root / 'truncated' / 'student_ids.bin'}: "
                                     f"{(root / 'truncated' / 'student_ids.bin').stat().st_size} bytes, but its index "
                                     f"student_ids.idx describes {(root / 'data' / 'student_ids.bin').stat().st_size} "
                                     f"(truncated; re-run tide-preprocess)")
    assert "Traceback" not in job.stderr
    assert not survivors, describe(survivors)


def test_corrupt_sample_mid_run_with_workers_exits_nonzero_within_the_deadline(run):
    root, config = run
    job, rc, elapsed, survivors, seen = _run_to_failure(train_command(config, root / "out-corrupt",
                                                                      f"data.train={root / 'corrupt'}"))
    assert rc == 2, job.stderr[-3000:]
    assert seen >= 2  # the DataLoader workers ran
    steps = [int(line.split()[1].split("/")[0]) for line in job.stdout.splitlines() if line.startswith("step ")]
    assert steps and max(steps) >= 10  # it failed mid-run, not at start-up
    line = last_line(job.stderr)
    assert line.startswith(f"tide-train: error: {root / 'corrupt' / 'student_ids.bin'}: sample ") and \
        "holds token id 1000000, outside the student vocabulary [0, 128)" in line, line
    assert "Traceback" not in job.stderr
    assert elapsed < DEADLINE_S and not survivors, describe(survivors)


def test_two_rank_job_with_a_corrupt_sample_ends_with_every_rank_and_worker(run):
    root, config = run
    job, rc, elapsed, survivors, seen = _run_to_failure(train_command(config, root / "out-corrupt-2",
                                                                      f"data.train={root / 'corrupt'}", nproc=2))
    assert rc != 0
    assert seen >= 2 + 4  # two ranks, two workers each
    assert "holds token id 1000000" in job.stderr
    assert elapsed < DEADLINE_S and not survivors, describe(survivors)

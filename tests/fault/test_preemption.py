"""Fault suite, item 2: SIGTERM to the whole process group (SLURM's ``kill -TERM -- -PGID``; torchrun sends the
same to each rank's group) writes a complete checkpoint, every rank exits 0, nothing is left running, and the
resumed run continues with exactly the losses of an uninterrupted one. The workers are alive when the signal
lands; the save needs no helper process that the signal could kill (it used to need a Manager)."""

import signal

import pytest

from tests.helpers.train_processes import Job, describe, losses, run_job, train_command, write_ce_run

pytestmark = pytest.mark.slow
STEPS = 40
TIMEOUT_S = 240


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    root = tmp_path_factory.mktemp("preempt")
    return root, write_ce_run(root, steps=STEPS, num_workers=2)


def _check_preempted_then_resumed(root, config, nproc):
    straight = run_job(train_command(config, root / f"straight-{nproc}", nproc=nproc), TIMEOUT_S)
    assert straight.proc.returncode == 0, straight.stderr[-3000:]
    reference = losses(straight.stdout)
    assert sorted(reference) == list(range(1, STEPS + 1))

    out = root / f"interrupted-{nproc}"
    with Job(train_command(config, out, nproc=nproc)) as job:
        job.wait_for(r"^step 3/", TIMEOUT_S)
        assert len(job.descendants()) >= (2 if nproc == 1 else 2 + 2 * 2)  # the workers (and ranks) are running
        job.signal_group(signal.SIGTERM)
        rc = job.finish(TIMEOUT_S)
        survivors = job.survivors()
    first = losses(job.stdout)
    stopped_at = max(first)
    assert 3 <= stopped_at < STEPS
    # Each rank checkpointed and returned 0 (torchrun itself re-raises the signal it got: exit 1).
    assert job.stderr.count(f"stopped by a signal at step {stopped_at}; checkpoint written, exiting 0") == nproc, \
        job.stderr[-3000:]
    assert rc == (0 if nproc == 1 else 1), job.stderr[-3000:]
    assert not survivors, describe(survivors)
    checkpoints = out / "checkpoints"
    assert (checkpoints / f"step_{stopped_at:07d}" / "tide_checkpoint.json").is_file()
    assert not [p.name for p in checkpoints.iterdir() if p.name.startswith(".tmp-")]

    resumed = run_job(train_command(config, out, nproc=nproc), TIMEOUT_S)
    assert resumed.proc.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from {checkpoints / f'step_{stopped_at:07d}'} at step {stopped_at}/{STEPS}" in resumed.stdout
    second = losses(resumed.stdout)
    assert sorted(second) == list(range(stopped_at + 1, STEPS + 1))
    assert {**first, **second} == reference


def test_sigterm_to_the_process_group_of_one_rank_checkpoints_and_resumes_exactly(config):
    _check_preempted_then_resumed(*config, nproc=1)


def test_sigterm_to_the_process_group_of_torchrun_with_two_ranks_checkpoints_and_resumes_exactly(config):
    _check_preempted_then_resumed(*config, nproc=2)

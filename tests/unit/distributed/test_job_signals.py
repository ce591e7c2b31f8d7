"""A job signal that arrives while a run is set up is kept for the training loop, not fatal (real signals)."""

import os
import signal

from tide_megatron.distributed.lifetime import job_signals_held, take_held_job_signal
from tide_megatron.training.trainer import PreemptionFlag


def test_a_sigterm_before_the_loop_listens_is_kept_and_the_loops_flag_takes_it():
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGUSR1)
    with job_signals_held():
        os.kill(os.getpid(), signal.SIGTERM)  # without the hold this would end the test process
        flag = PreemptionFlag()
        flag.install()
        try:
            assert flag.raised == signal.SIGTERM and flag.any_rank()
            assert take_held_job_signal() is None  # taken once
        finally:
            flag.restore()
        os.kill(os.getpid(), signal.SIGUSR1)  # after the loop: held again, never fatal inside the block
        assert take_held_job_signal() == signal.SIGUSR1
        os.kill(os.getpid(), signal.SIGTERM)
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGUSR1)) == before
    assert take_held_job_signal() is None  # what the block held goes with it


def test_without_a_held_signal_the_flag_starts_clear():
    with job_signals_held():
        flag = PreemptionFlag()
        flag.install()
        try:
            assert flag.raised is None and not flag.any_rank()
            os.kill(os.getpid(), signal.SIGUSR1)  # the loop's own handler now
            assert flag.raised == signal.SIGUSR1
        finally:
            flag.restore()

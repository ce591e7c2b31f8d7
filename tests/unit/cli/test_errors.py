"""cli/errors.py: one line naming what was wrong, the exit status it maps to, the traceback only on request."""

import pytest
from torch.distributed.checkpoint.api import CheckpointException

from tide_megatron.cli.errors import DEBUG_ENV, cli_errors
from tide_megatron.data.indexed import DatasetError


def _main_raising(err, seen=None):
    @cli_errors("tide-x")
    def main(argv=None):
        if seen is not None:
            seen.append(list(argv))
        raise err

    return main


@pytest.fixture(autouse=True)
def no_debug(monkeypatch):
    monkeypatch.setenv(DEBUG_ENV, "")  # off, and whatever --debug sets is undone after the test


def test_bad_input_is_one_line_and_exit_2(capsys):
    assert _main_raising(FileNotFoundError("data/x.idx: missing (re-run tide-preprocess)"))([]) == 2
    assert capsys.readouterr().err == "tide-x: error: data/x.idx: missing (re-run tide-preprocess)\n"


def test_anything_else_names_its_type_and_points_to_the_traceback(capsys):
    assert _main_raising(RuntimeError("boom\nsecond line"))([]) == 1
    assert capsys.readouterr().err == ("tide-x: error: RuntimeError: boom (rerun with --debug or TIDE_DEBUG=1 for "
                                       "the traceback)\n")


def test_debug_flag_prints_the_traceback_and_is_not_passed_on(capsys, monkeypatch):
    seen = []
    assert _main_raising(ValueError("bad field"), seen)(["--config", "c.yaml", "--debug", "a=1"]) == 2
    err = capsys.readouterr().err
    assert seen == [["--config", "c.yaml", "a=1"]]
    assert err.startswith("Traceback (most recent call last):") and err.endswith("tide-x: error: bad field\n")
    monkeypatch.setenv(DEBUG_ENV, "")
    assert _main_raising(ValueError("bad field"))([]) == 2
    assert "Traceback" not in capsys.readouterr().err
    monkeypatch.setenv(DEBUG_ENV, "1")
    assert _main_raising(ValueError("bad field"))([]) == 2
    assert "Traceback" in capsys.readouterr().err


def test_torch_checkpoint_exception_is_reported_by_the_ranks_own_error(capsys):
    inner = FileNotFoundError("ckpt/__0_1.distcp: shard missing")
    err = CheckpointException("load failed", {0: (inner, None)})
    assert not isinstance(err, Exception)  # the reason `except Exception` missed it
    assert _main_raising(err)([]) == 2
    assert capsys.readouterr().err == "tide-x: error: ckpt/__0_1.distcp: shard missing\n"


def test_an_error_from_a_dataloader_worker_is_reported_by_its_own_message(capsys):
    wrapped = DatasetError("Caught DatasetError in DataLoader worker process 0.\nOriginal Traceback (most recent "
                           "call last):\n  File \"x.py\", line 1, in <module>\n"
                           "tide_megatron.data.indexed.DatasetError: d/student_ids.bin: sample 3 holds token id 999\n")
    assert _main_raising(wrapped)([]) == 2
    assert capsys.readouterr().err == "tide-x: error: d/student_ids.bin: sample 3 holds token id 999\n"


def test_ctrl_c_and_system_exit(capsys):
    assert _main_raising(KeyboardInterrupt())([]) == 130
    assert capsys.readouterr().err == "tide-x: interrupted\n"
    with pytest.raises(SystemExit):
        _main_raising(SystemExit("tide-x: --flag: bad"))([])

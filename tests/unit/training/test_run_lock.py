"""The run lock (one run per directory) and the run fingerprint (no resuming another run's checkpoint)."""

import json
import os
import shutil
import socket

import pytest

from tide_megatron.config import config_from_dict
from tide_megatron.training.checkpoint import (COMPLETE_MARKER, CheckpointError, check_fingerprint, resolve_resume,
                                               run_fingerprint)
from tide_megatron.training.run_lock import LOCK_FILE, RunDirectoryLocked, RunLock


def test_a_held_directory_is_refused_naming_the_holder_and_free_again_after_release(tmp_path):
    first = RunLock.acquire([str(tmp_path / "run"), str(tmp_path / "run" / "checkpoints")])
    holder = json.loads((tmp_path / "run" / LOCK_FILE).read_text())
    assert (holder["host"], holder["pid"]) == (socket.gethostname(), os.getpid())
    assert not (tmp_path / "run" / "checkpoints" / LOCK_FILE).exists()  # covered by the output_dir lock
    with pytest.raises(RunDirectoryLocked, match=rf"{tmp_path / 'run'} is in use by another tide-train run \(host "
                                                 rf"{socket.gethostname()}, pid {os.getpid()}, started "):
        RunLock.acquire([str(tmp_path / "run")])
    first.release()
    RunLock.acquire([str(tmp_path / "run")]).release()


def test_a_checkpoint_dir_elsewhere_is_locked_too(tmp_path):
    lock = RunLock.acquire([str(tmp_path / "out"), str(tmp_path / "ckpt")])
    with pytest.raises(RunDirectoryLocked, match="ckpt is in use"):
        RunLock.acquire([str(tmp_path / "other"), str(tmp_path / "ckpt")])
    lock.release()


def _cfg(tmp_path, **optim):
    student = tmp_path / "student"
    if not student.is_dir():
        student.mkdir()
        (student / "config.json").write_text(json.dumps({"hidden_size": 32}))
    return config_from_dict({"output_dir": str(tmp_path / "out"), "student": {"checkpoint": str(student)},
                             "objective": {"mode": "ce"}, "optim": optim})


class _Data:
    def __init__(self, meta, n):
        self.meta, self.n = meta, n

    def __len__(self):
        return self.n


def test_the_fingerprint_follows_content_not_paths(tmp_path):
    meta = {"config": {"align": "pairs"}, "summary": {"kept": 8}}
    base = run_fingerprint(_cfg(tmp_path, seed=1), _Data(meta, 8))
    assert run_fingerprint(_cfg(tmp_path, seed=1), _Data({**meta, "summary": {"kept": 9}}, 8)) == base
    moved = tmp_path / "moved"
    shutil.copytree(tmp_path / "student", moved / "student")
    assert run_fingerprint(_cfg(moved, seed=1), _Data(meta, 8))["student"] == base["student"]
    assert run_fingerprint(_cfg(tmp_path, seed=2), _Data(meta, 8))["seed"] == 2
    assert run_fingerprint(_cfg(tmp_path, seed=1), _Data(meta, 9))["data"] != base["data"]
    (tmp_path / "student" / "config.json").write_text(json.dumps({"hidden_size": 64}))
    assert run_fingerprint(_cfg(tmp_path, seed=1), _Data(meta, 8))["student"] != base["student"]


def test_a_different_fingerprint_is_refused_unless_forced(tmp_path):
    saved = {"seed": 42, "mode": "ce", "data": "aa", "student": "bb"}
    check_fingerprint("ckpt", saved, dict(saved))
    check_fingerprint("ckpt", None, dict(saved))  # written before fingerprints existed
    with pytest.raises(CheckpointError, match=r"checkpoint 'ckpt' was written by a different run \(mode: checkpoint "
                                              r"'ce', this run 'kl'; seed: checkpoint 42, this run 7\); refusing"):
        check_fingerprint("ckpt", saved, {**saved, "seed": 7, "mode": "kl"})
    step = tmp_path / "step_0000003"
    step.mkdir()
    for name in ("metadata.json", "common.pt"):
        (step / name).write_text("{}")
    (step / COMPLETE_MARKER).write_text(json.dumps({"format_version": 1, "step": 3, "fingerprint": saved}))
    with pytest.raises(CheckpointError, match="checkpoint.resume=force"):
        resolve_resume("auto", str(tmp_path), {**saved, "seed": 7})
    assert resolve_resume("force", str(tmp_path), {**saved, "seed": 7}) == str(step)
    assert resolve_resume("auto", str(tmp_path), saved) == str(step)

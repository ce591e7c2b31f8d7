"""The run lock (one run per directory) and the run fingerprint (no resuming another run's checkpoint)."""

import json
import shutil
import socket
import subprocess
import sys

import pytest

from tide_megatron.config import config_from_dict
from tide_megatron.training.checkpoint import (COMPLETE_MARKER, CheckpointError, check_fingerprint, resolve_resume,
                                               run_fingerprint)
from tide_megatron.training.run_lock import LOCK_FILE, RunDirectoryLocked, RunLock


HOLD = """
import sys, time
from tide_megatron.training.run_lock import RunLock
lock = RunLock.acquire(sys.argv[1:])
print("held", flush=True)
time.sleep(60)
"""


def _other_process_holding(*directories):
    proc = subprocess.Popen([sys.executable, "-c", HOLD, *map(str, directories)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "held\n"
    return proc


def test_a_directory_held_by_another_process_is_refused_naming_the_holder(tmp_path):
    holder = _other_process_holding(tmp_path / "run")
    try:
        info = json.loads((tmp_path / "run" / LOCK_FILE).read_text())
        assert (info["host"], info["pid"]) == (socket.gethostname(), holder.pid)
        with pytest.raises(RunDirectoryLocked, match=rf"{tmp_path / 'run'} is in use by another tide-train run "
                                                     rf"\(host {socket.gethostname()}, pid {holder.pid}, started "):
            RunLock.acquire([str(tmp_path / "run"), str(tmp_path / "run" / "checkpoints")])
    finally:
        holder.kill()
        holder.wait()
    RunLock.acquire([str(tmp_path / "run")]).release()  # the kernel dropped the lock with its holder


def test_the_lock_is_shared_within_a_process_and_freed_by_the_last_release(tmp_path):
    first = RunLock.acquire([str(tmp_path / "run"), str(tmp_path / "run" / "checkpoints")])
    assert not (tmp_path / "run" / "checkpoints" / LOCK_FILE).exists()  # covered by the output_dir lock
    second = RunLock.acquire([str(tmp_path / "run")])  # e.g. a fresh trainer resuming in the same process
    first.release()
    holder = subprocess.run([sys.executable, "-c", HOLD, str(tmp_path / "run")], capture_output=True, text=True)
    assert holder.returncode == 1 and "is in use by another tide-train run" in holder.stderr
    second.release()
    last = _other_process_holding(tmp_path / "run")  # free for other processes now
    last.kill()
    last.wait()


def test_a_checkpoint_dir_elsewhere_is_locked_too(tmp_path):
    holder = _other_process_holding(tmp_path / "out", tmp_path / "ckpt")
    try:
        with pytest.raises(RunDirectoryLocked, match="ckpt is in use"):
            RunLock.acquire([str(tmp_path / "other"), str(tmp_path / "ckpt")])
    finally:
        holder.kill()
        holder.wait()


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

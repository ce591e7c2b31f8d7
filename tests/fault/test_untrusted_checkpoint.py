"""Fault suite, item 5: checkpoints are data, never code. torch's ``.metadata`` is a pickle and megatron's
sharded objects are pickles inside the ``.distcp`` shards; replaced by an attacker, either used to run code on
resume, in ``tide-eval --mcore-dir`` and in ``export``. Each path now refuses with one clear error naming the
file, and the payload never runs. Missing and truncated shards are one error naming the shard."""

import io
import os
import pickle
import shutil

import pytest
import torch

from tests.helpers.train_processes import last_line, run_job, train_command, write_ce_run

pytestmark = pytest.mark.slow
TIMEOUT_S = 120
STEPS = 3


class _Payload:
    """Unpickled by a trusting loader, this runs a shell command that creates ``marker``."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A run that finished with a checkpoint at step STEPS (config, its output dir, the step directory)."""
    root = tmp_path_factory.mktemp("untrusted")
    config = write_ce_run(root, steps=STEPS, num_workers=0)
    out = root / "run"
    job = run_job(train_command(config, out), TIMEOUT_S)
    assert job.proc.returncode == 0, job.stderr[-3000:]
    return config, out, out / "checkpoints" / f"step_{STEPS:07d}"


def _copy_run(out, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(out, copy, ignore=shutil.ignore_patterns(".tide-train.lock"))
    return copy, copy / "checkpoints" / f"step_{STEPS:07d}"


def _resume(config, out, more=2):
    return run_job(train_command(config, out, f"optim.train_steps={STEPS + more}"), TIMEOUT_S)


def test_a_replaced_metadata_pickle_is_refused_on_resume_and_never_runs(trained, tmp_path):
    config, out, _ = trained
    run, step = _copy_run(out, tmp_path)
    marker = tmp_path / "pwned"
    (step / ".metadata").write_bytes(pickle.dumps(_Payload(str(marker))))
    job = _resume(config, run)
    assert job.proc.returncode == 2, job.stderr[-3000:]
    assert last_line(job.stderr) == (
        f"tide-train: error: {step / '.metadata'}: refusing to load: it asks to build posix.system, which is not "
        f"one of the metadata classes torch writes there (a tampered or foreign file; checkpoints are data, never "
        f"code)")
    assert not marker.exists()


def test_a_sharded_object_that_is_code_is_refused_on_resume_and_never_runs(trained, tmp_path):
    config, out, _ = trained
    run, step = _copy_run(out, tmp_path)
    marker = tmp_path / "pwned"
    metadata = pickle.loads((step / ".metadata").read_bytes())  # the genuine file, read by the test itself
    buf = io.BytesIO()
    torch.save([_Payload(str(marker))], buf)
    (step / "evil.distcp").write_bytes(buf.getvalue())
    index = next(i for i in metadata.storage_data if i.fqn.startswith("rng_state"))
    info = metadata.storage_data[index]
    info.relative_path, info.offset, info.length = "evil.distcp", 0, len(buf.getvalue())
    (step / ".metadata").write_bytes(pickle.dumps(metadata))
    job = _resume(config, run)
    assert job.proc.returncode == 2, job.stderr[-3000:]
    line = last_line(job.stderr)
    assert line.startswith(f"tide-train: error: {step}: refusing to load an object of the checkpoint: ") and \
        "posix.system" in line, line
    assert not marker.exists()


@pytest.mark.parametrize("damage", ["missing", "truncated"])
def test_a_missing_or_truncated_shard_is_one_line_naming_it(trained, tmp_path, damage):
    config, out, _ = trained
    run, step = _copy_run(out, tmp_path)
    shard = sorted(step.glob("*.distcp"))[-1]
    size = shard.stat().st_size
    if damage == "missing":
        shard.unlink()
        expected = f"{shard}: shard missing (the checkpoint's .metadata lists it); the checkpoint is incomplete"
    else:
        with open(shard, "r+b") as fh:
            fh.truncate(size // 2)
        expected = (f"{shard}: shard truncated: {size // 2} bytes, the checkpoint's .metadata needs {size}; the "
                    f"checkpoint is incomplete (an interrupted copy?)")
    job = _resume(config, run)
    assert job.proc.returncode == 2, job.stderr[-3000:]
    assert last_line(job.stderr) == f"tide-train: error: {expected}"
    assert "Traceback" not in job.stderr


def test_tide_eval_refuses_a_converted_checkpoint_whose_metadata_is_code(tmp_path):
    from tide_megatron.cli.convert import main as tide_convert
    from tide_megatron.models.qwen3.tiny import save_tiny_qwen3

    save_tiny_qwen3(str(tmp_path / "hf"), seed=3, vocab_size=128)
    assert tide_convert(["hf-to-mcore", "--hf-dir", str(tmp_path / "hf"), "--mcore-dir", str(tmp_path / "mcore")]) == 0
    marker = tmp_path / "pwned"
    (tmp_path / "mcore" / ".metadata").write_bytes(pickle.dumps(_Payload(str(marker))))
    import sys

    job = run_job([sys.executable, "-m", "tide_megatron.cli.evaluate", "--mcore-dir", str(tmp_path / "mcore"),
                   "--tasks", "throughput"], TIMEOUT_S)
    assert job.proc.returncode == 2, job.stderr[-3000:]
    assert last_line(job.stderr).startswith(f"tide-eval: error: {tmp_path / 'mcore' / '.metadata'}: refusing to load")
    assert not marker.exists()


def test_export_refuses_a_trainer_checkpoint_whose_metadata_is_code(trained, tmp_path):
    from tide_megatron.distributed.checkpoint_io import UnsafeCheckpointError
    from tide_megatron.training.export import export_student

    _, out, _ = trained
    run, step = _copy_run(out, tmp_path)
    marker = tmp_path / "pwned"
    (step / ".metadata").write_bytes(pickle.dumps(_Payload(str(marker))))
    with pytest.raises(UnsafeCheckpointError, match=r"\.metadata: refusing to load: it asks to build posix\.system"):
        export_student(str(step), str(tmp_path / "hf-out"))
    assert not marker.exists() and not (tmp_path / "hf-out").exists()

"""tide-train end to end under torchrun (2 gloo ranks): SIGTERM to the rank processes (as SLURM sends it)
checkpoints and exits 0, and a resumed run continues with exactly the losses of an uninterrupted one."""

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

REPO = Path(__file__).resolve().parents[3]
STEPS = 24


def _write_dataset(out: Path, n: int) -> None:
    from tests.helpers import tiny_distill as td
    from tide_megatron.data.indexed import DatasetWriter

    samples = td.make_samples(n, "B")
    meta = td.dataset_meta("B", seq_length=48)
    with DatasetWriter(out, fields=("student_ids", "student_labels", "teacher_ids", "pairs")) as writer:
        for s in samples:
            writer.add({k: np.asarray(s[k]).reshape(-1) for k in ("student_ids", "student_labels", "teacher_ids",
                                                                    "pairs")})
        writer.meta = meta


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from tests.helpers import tiny_distill as td

    root = tmp_path_factory.mktemp("e2e")
    td.write_student(root / "student")
    td.write_dense_teacher(root / "teacher")
    _write_dataset(root / "data", 64)
    cfg = {"preset": "b_tide_shared",
           "student": {"checkpoint": str(root / "student"), "seq_length": 48, "block_size": 16},
           "teacher": {"checkpoint": str(root / "teacher"), "tp": 2, "dtype": "fp32"},
           "data": {"train": str(root / "data"), "micro_batch_size": 2, "num_workers": 1},
           "optim": {"train_steps": STEPS, "lr": 1e-3},
           "objective": {"shared_vocab": td.STUDENT_VOCAB - 8},
           "precision": {"dtype": "fp32"},
           "checkpoint": {"save_interval": 1000, "resume": "auto"},
           "logging": {"log_interval": 1, "tensorboard": False}}
    (root / "config.yaml").write_text(yaml.safe_dump(cfg))
    return root


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _command(root: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port",
            str(_free_port()), "-m", "tide_megatron.cli.train", "--config", str(root / "config.yaml"),
            f"output_dir={out}"]


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "TORCHDYNAMO_DISABLE": "1",
            "PYTHONUNBUFFERED": "1"}


STEP_LINE = re.compile(r"^step (\d+)/\d+ .*\| total ([0-9.]+)")


def _losses(text: str) -> dict[int, str]:
    return {int(m.group(1)): m.group(2) for m in map(STEP_LINE.match, text.splitlines()) if m}


@pytest.mark.slow
def test_sigterm_to_the_ranks_checkpoints_exits_0_and_resume_is_exact(setup):
    import psutil

    straight = subprocess.run(_command(setup, setup / "straight"), env=_env(), capture_output=True, text=True,
                              timeout=300, cwd=REPO)
    assert straight.returncode == 0, straight.stderr[-3000:]
    reference = _losses(straight.stdout)
    assert sorted(reference) == list(range(1, STEPS + 1))

    run = setup / "interrupted"
    proc = subprocess.Popen(_command(setup, run), env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=REPO)
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if line.startswith("step 2/"):
            ranks = [c for c in psutil.Process(proc.pid).children() if "tide_megatron.cli.train" in " ".join(c.cmdline())]
            assert len(ranks) == 2
            for child in ranks:  # SLURM signals every task of the step, not the launcher
                child.send_signal(signal.SIGTERM)
            break
    out, err = proc.communicate(timeout=300)
    seen.append(out)
    assert proc.returncode == 0, err[-3000:]
    assert "stopped by a signal" in err
    first = _losses("".join(seen))
    stopped_at = max(first)
    assert 2 <= stopped_at < STEPS
    assert (run / "checkpoints" / f"step_{stopped_at:07d}" / "tide_checkpoint.json").is_file()

    resumed = subprocess.run(_command(setup, run), env=_env(), capture_output=True, text=True, timeout=300, cwd=REPO)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"at step {stopped_at}/{STEPS}" in resumed.stdout
    second = _losses(resumed.stdout)
    assert sorted(second) == list(range(stopped_at + 1, STEPS + 1))
    assert {**first, **second} == reference

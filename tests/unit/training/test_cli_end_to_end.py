"""tide-train end to end under torchrun (2 gloo ranks): SIGTERM to the rank processes (as SLURM sends it)
checkpoints and exits 0, and a resumed run continues with exactly the losses of an uninterrupted one."""

import signal
import subprocess

import pytest
import yaml

from tests.helpers.train_processes import REPO, env, losses, train_command, write_dataset

STEPS = 24


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from tests.helpers import tiny_distill as td

    root = tmp_path_factory.mktemp("e2e")
    td.write_student(root / "student")
    td.write_dense_teacher(root / "teacher")
    write_dataset(root / "data", 64)
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


@pytest.mark.slow
def test_sigterm_to_the_ranks_checkpoints_exits_0_and_resume_is_exact(setup):
    import psutil

    config = setup / "config.yaml"
    straight = subprocess.run(train_command(config, setup / "straight", nproc=2), env=env(), capture_output=True,
                              text=True, timeout=300, cwd=REPO)
    assert straight.returncode == 0, straight.stderr[-3000:]
    reference = losses(straight.stdout)
    assert sorted(reference) == list(range(1, STEPS + 1))

    run = setup / "interrupted"
    proc = subprocess.Popen(train_command(config, run, nproc=2), env=env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=REPO)
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
    first = losses("".join(seen))
    stopped_at = max(first)
    assert 2 <= stopped_at < STEPS
    assert (run / "checkpoints" / f"step_{stopped_at:07d}" / "tide_checkpoint.json").is_file()

    resumed = subprocess.run(train_command(config, run, nproc=2), env=env(), capture_output=True, text=True,
                             timeout=300, cwd=REPO)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"at step {stopped_at}/{STEPS}" in resumed.stdout
    second = losses(resumed.stdout)
    assert sorted(second) == list(range(stopped_at + 1, STEPS + 1))
    assert {**first, **second} == reference

"""Trainer components that need no process group: checkpoint directory checks, FP8 refusal, data positions,
the LR schedule shape, the metrics logger, and the CLI's bad-input errors."""

import errno
import io
import json
import math
import shutil

import pytest
import torch

from tide_megatron.config import ConfigError, OptimConfig, PrecisionConfig
from tide_megatron.training.checkpoint import (COMPLETE_MARKER, CheckpointError, _save_failure_message,
                                               list_checkpoints, resolve_resume, validate_checkpoint_dir)
from tide_megatron.training.data import ResumableBatches


def _fake_complete(path, step):
    path.mkdir(parents=True)
    (path / "metadata.json").write_text("{}")
    (path / "common.pt").write_bytes(b"x")
    (path / COMPLETE_MARKER).write_text(json.dumps({"format_version": 1, "step": step}))


def test_resume_auto_picks_the_newest_complete_checkpoint(tmp_path):
    assert resolve_resume("auto", str(tmp_path / "none")) is None
    assert resolve_resume("none", str(tmp_path)) is None
    _fake_complete(tmp_path / "step_0000003", 3)
    _fake_complete(tmp_path / "step_0000012", 12)
    (tmp_path / ".tmp-step_0000015").mkdir()  # an interrupted save is never a candidate
    assert [p.name for p in list_checkpoints(str(tmp_path))] == ["step_0000003", "step_0000012"]
    assert resolve_resume("auto", str(tmp_path)).endswith("step_0000012")


def test_partial_or_corrupt_checkpoint_is_a_clear_error(tmp_path):
    (tmp_path / "step_0000007").mkdir()
    with pytest.raises(CheckpointError, match="step_0000007.* is partial .*tide_checkpoint.json is missing"):
        resolve_resume("auto", str(tmp_path))
    _fake_complete(tmp_path / "other", 1)
    (tmp_path / "other" / "metadata.json").unlink()
    with pytest.raises(CheckpointError, match="is corrupt: dist_checkpointing's metadata.json"):
        resolve_resume(str(tmp_path / "other"), str(tmp_path))
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / COMPLETE_MARKER).write_text("{not json")
    with pytest.raises(CheckpointError, match="tide_checkpoint.json is corrupt"):
        validate_checkpoint_dir(str(tmp_path / "bad"))
    with pytest.raises(CheckpointError, match="not a directory"):
        validate_checkpoint_dir(str(tmp_path / "absent"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU refusal")
def test_fp8_is_refused_on_cpu_with_a_clear_message():
    from tide_megatron.training.fp8 import check_fp8_available, fp8_settings

    assert fp8_settings(PrecisionConfig(fp8=False)) == {}
    with pytest.raises(ConfigError, match="precision.fp8: FP8 needs a CUDA GPU"):
        check_fp8_available(PrecisionConfig(fp8=True))
    with pytest.raises(ConfigError, match="precision.fp8: FP8 runs on top of bf16"):
        PrecisionConfig(fp8=True, dtype="fp32")


def test_data_positions_partition_each_epoch_and_resume_anywhere():
    ranks = [ResumableBatches(20, 3, r, 2, seed=5) for r in range(2)]
    assert ranks[0].per_epoch == 3  # 20 // (3 * 2); the incomplete global batch is dropped
    epoch0 = [i for r in ranks for p in range(3) for i in r.batch_at(p)]
    assert len(set(epoch0)) == 18 and set(epoch0) <= set(range(20))
    assert ranks[0].batch_at(3) != ranks[0].batch_at(0)  # a new permutation in epoch 1
    segs = list(ranks[1].segments(2, 7))
    assert [e for e, _ in segs] == [0, 1, 2] and sum(len(b) for _, b in segs) == 5
    assert segs[1][1][0] == ranks[1].batch_at(3)
    with pytest.raises(ValueError, match="fewer than one global batch"):
        ResumableBatches(5, 3, 0, 2, seed=0)


def test_cosine_schedule_with_warmup_matches_the_hf_rule():
    """Linear warmup over ceil(0.1 N) steps from 0, then cosine to min_lr (HF get_cosine_schedule_with_warmup)."""
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

    from tide_megatron.training.optimizer import build_lr_scheduler, warmup_steps

    class _Opt:
        param_groups = [{"lr": 0.0, "weight_decay": 0.0}]

    cfg = OptimConfig(lr=1e-3, warmup_ratio=0.1)
    sched = build_lr_scheduler(_Opt(), cfg, total_steps=100)
    assert isinstance(sched, OptimizerParamScheduler) and warmup_steps(100, 0.1) == 10
    lrs = []
    for _ in range(101):
        lrs.append(_Opt.param_groups[0]["lr"])
        sched.step(1)
    hf = [1e-3 * k / 10 if k < 10 else 1e-3 * 0.5 * (1 + math.cos(math.pi * (k - 10) / 90)) for k in range(101)]
    assert lrs[0] == 0.0
    assert max(abs(a - b) for a, b in zip(lrs, hf)) < 1e-12


def test_logger_prints_one_line_per_interval_and_a_summary(tmp_path):
    from tide_megatron.training.logging import MetricsLogger

    out = io.StringIO()
    log = MetricsLogger(str(tmp_path / "tb"), log_interval=2, tensorboard=True, stream=out, total_steps=4)
    for step in range(1, 5):
        log.record(step, {"loss/total": float(step), "loss/ce": 1.0, "lr": 1e-3, "tokens": 100,
                          "time/teacher_s": 0.1, "time/student_s": 0.2})
    summary = log.summary(4)
    log.close()
    lines = [ln for ln in out.getvalue().splitlines() if ln.startswith("step")]
    assert len(lines) == 2 and "total 1.5000" in lines[0] and "total 3.5000" in lines[1]
    assert log.history["loss/total"] == [(2, 1.5), (4, 3.5)]
    assert summary["teacher_time_s"] == pytest.approx(0.4) and summary["student_time_s"] == pytest.approx(0.8)
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))


def test_cli_bad_input_is_one_clear_error(tmp_path, capsys):
    from tide_megatron.cli.train import main

    assert main(["--config", str(tmp_path / "missing.yaml")]) == 2
    assert "--config: file" in capsys.readouterr().err
    cfg = tmp_path / "c.yaml"
    cfg.write_text("preset: a_tide_cross\nstudent: {checkpoint: nowhere}\n")
    assert main(["--config", str(cfg)]) == 2
    assert "student.checkpoint: file or directory 'nowhere' does not exist" in capsys.readouterr().err


def test_keep_last_prunes_the_oldest_checkpoints(tmp_path):
    from tide_megatron.training.checkpoint import _prune

    for step in (2, 4, 6, 8):
        _fake_complete(tmp_path / f"step_{step:07d}", step)
    _prune(tmp_path, keep_last=2)
    assert [p.name for p in list_checkpoints(str(tmp_path))] == ["step_0000006", "step_0000008"]


def test_a_failed_save_without_room_for_a_checkpoint_is_reported_as_a_full_disk(tmp_path):
    """torch's zip writer can hit a full disk without an errno ("unexpected pos"); the free space decides."""
    _fake_complete(tmp_path / "step_0000004", 4)
    tmp = tmp_path / ".tmp-step_0000008"
    hidden = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
    free = shutil.disk_usage(tmp_path).free
    full = _save_failure_message(hidden, tmp_path, tmp, needed=free * 2 + 1)
    assert full.startswith(f"checkpoint save to {tmp} failed: no space left on device (")
    assert full.endswith(f"a checkpoint needs about {free * 2 + 1}); the partial directory was removed and the "
                         f"previous checkpoint {tmp_path / 'step_0000004'} is kept")
    roomy = _save_failure_message(hidden, tmp_path, tmp, needed=1)  # room enough: the writer's own error
    assert roomy == (f"checkpoint save to {tmp} failed: RuntimeError: {hidden}; the partial directory was removed "
                     f"and the previous checkpoint {tmp_path / 'step_0000004'} is kept")
    enospc = _save_failure_message(OSError(errno.ENOSPC, "No space left on device"), tmp_path, tmp, needed=1)
    assert "failed: no space left on device (" in enospc

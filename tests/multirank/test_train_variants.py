"""The distillation trainer on 2 gloo ranks (issue 6, "Must show"): the six paper variants with a tiny
teacher (EP=2 MoE for pipeline A, TP=2 dense for pipeline B) and a DP=2 student; held-out loss falls;
exact resume; SIGTERM leaves a checkpoint that loads."""

import math
import os
import signal
import tempfile
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from tide_megatron.config import config_from_dict
from tide_megatron.training.checkpoint import list_checkpoints, validate_checkpoint_dir
from tide_megatron.training.trainer import DistillTrainer
from tests.helpers import tiny_distill as td

EXPECTED_TERMS = {
    "a_calm": "alm", "a_tide_cross": "reverse_alm", "a_tide_shared": "alm_taid",
    "b_kl": "kl_aligned", "b_tide_cross": "reverse_kl_aligned", "b_tide_shared": "taid_aligned",
}


def _shared_dir(name: str) -> Path:
    """One directory both ranks agree on (rank 0 creates it)."""
    holder = [tempfile.mkdtemp(prefix=f"tide-{name}-") if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(holder, src=0)
    return Path(holder[0])


@pytest.fixture(scope="module")
def artifacts():
    root = _shared_dir("artifacts")
    if dist.get_rank() == 0:
        td.write_student(root / "student")
        td.write_dense_teacher(root / "dense")
        td.write_moe_teacher(root / "moe")
    dist.barrier()
    return root


def _config(artifacts: Path, variant: str, out: Path, **sections):
    pipe = "A" if variant.startswith("a_") else "B"
    raw = {"preset": variant, "output_dir": str(out),
           "student": {"checkpoint": str(artifacts / "student"), "seq_length": 48, "block_size": 16},
           "teacher": {"checkpoint": str(artifacts / ("moe" if pipe == "A" else "dense")), "dtype": "fp32",
                       **({"ep": 2} if pipe == "A" else {"tp": 2})},
           "data": {"micro_batch_size": 2, "num_workers": 0},
           "optim": {"train_steps": 2, "lr": 1e-3},
           "objective": {"shared_vocab": td.STUDENT_VOCAB - 8},
           "precision": {"dtype": "fp32"},
           "checkpoint": {"resume": "none", "save_interval": 1000, "save_at_end": False},
           "logging": {"log_interval": 1, "tensorboard": True}}
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value}
    return config_from_dict(raw), pipe


def _trainer(cfg, pipe, n_train=16, n_valid=0):
    valid = td.make_dataset(n_valid, pipe, seed=99) if n_valid else None
    return DistillTrainer(cfg, td.make_dataset(n_train, pipe), valid_data=valid)


@pytest.mark.parametrize("variant", sorted(EXPECTED_TERMS))
def test_variant_runs_with_every_loss_term_finite_and_logged(artifacts, variant):
    out = _shared_dir(variant)
    cfg, pipe = _config(artifacts, variant, out)
    trainer = _trainer(cfg, pipe)
    teacher_pgs = trainer.teacher_grid.pgs
    if pipe == "A":
        assert dist.get_world_size(teacher_pgs.ep) == 2 and dist.get_world_size(teacher_pgs.tp) == 1
    else:
        assert dist.get_world_size(teacher_pgs.tp) == 2
    assert trainer.student_dp == 2
    summary = trainer.run()
    trainer.close()
    hist = trainer.logger.history
    term = EXPECTED_TERMS[variant]
    for key in ("loss/total", "loss/ce", f"loss/{term}", "lr", "grad_norm", "tokens_per_s", "time/teacher_s",
                "time/student_s", "memory/peak_gib"):
        assert len(hist[key]) == 2, key
        assert all(math.isfinite(v) for _, v in hist[key]), (key, hist[key])
    assert all(v > 0 for _, v in hist[f"loss/{term}"])
    if "taid" in term:
        assert len(hist["lambda"]) == 2 and 0 < hist["lambda"][0][1] < 0.9
    assert summary["final_step"] == 2
    if dist.get_rank() == 0:
        assert list((out / "tensorboard").glob("events.out.tfevents.*"))


def test_held_out_loss_falls_over_50_steps(artifacts):
    out = _shared_dir("falls")
    cfg, pipe = _config(artifacts, "a_tide_cross", out, optim={"train_steps": 50, "lr": 3e-3, "warmup_ratio": 0.1},
                        logging={"log_interval": 25, "eval_batches": 4, "tensorboard": False})
    trainer = _trainer(cfg, pipe, n_train=64, n_valid=16)
    before = trainer.evaluate()["eval/total"]
    trainer.run()
    after = trainer.logger.history["eval/total"][-1][1]
    trainer.close()
    assert after < 0.8 * before, (before, after)


def _losses(trainer) -> list[float]:
    return [v for _, v in trainer.logger.history["loss/total"]]


def test_exact_resume_matches_an_uninterrupted_run(artifacts):
    """6 steps straight == 3 steps, stop, a fresh trainer resumes from the checkpoint, 3 more steps."""
    common = dict(optim={"train_steps": 6, "lr": 2e-3}, checkpoint={"save_interval": 3, "resume": "auto"},
                  logging={"log_interval": 1, "tensorboard": False})
    cfg, pipe = _config(artifacts, "b_tide_shared", _shared_dir("straight"), **common)
    straight = _trainer(cfg, pipe)
    straight.run()
    cfg, pipe = _config(artifacts, "b_tide_shared", _shared_dir("resumed"), **common)
    first = _trainer(cfg, pipe)
    first.run(stop_after=3)
    assert first.state.step == 3 and len(list_checkpoints(cfg.checkpoint.dir)) == 1
    del first
    second = _trainer(cfg, pipe)  # resume=auto finds step 3
    assert second.state.step == 3 and second.state.total_steps == 6
    second.run()
    assert _losses(straight)[:3] + _losses(second) == _losses(straight)
    assert len(_losses(straight)) == 6


def test_sigterm_mid_run_leaves_a_checkpoint_that_loads(artifacts):
    cfg, pipe = _config(artifacts, "a_tide_shared", _shared_dir("sigterm"),
                        optim={"train_steps": 8}, checkpoint={"save_interval": 1000, "resume": "auto"},
                        logging={"tensorboard": False})
    trainer = _trainer(cfg, pipe)
    original = trainer.train_step

    def step_then_signal(batches):
        result = original(batches)
        if trainer.state.step == 2 and dist.get_rank() == 1:
            os.kill(os.getpid(), signal.SIGTERM)  # only one rank is signalled; both must stop together
        return result

    trainer.train_step = step_then_signal
    summary = trainer.run()
    assert summary["preempted"] == 1.0 and trainer.state.step == 2
    ckpts = list_checkpoints(cfg.checkpoint.dir)
    assert [c.name for c in ckpts] == ["step_0000002"]
    assert validate_checkpoint_dir(str(ckpts[0]))["step"] == 2
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    resumed = _trainer(cfg, pipe)
    assert resumed.state.step == 2
    for p_saved, p_loaded in zip(trainer.model.parameters(), resumed.model.parameters()):
        assert torch.equal(p_saved, p_loaded)
    resumed.run(stop_after=1)
    assert resumed.state.step == 3

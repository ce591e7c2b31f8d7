"""optim.seed is the seed axis of an ablation: it fixes the data order and the noise (student masks, t, the
alignment stage's draws), so one seed repeats exactly and another differs. The student's init is its
checkpoint's (optim.seed does not touch it; the demo draws random inits from the seed itself)."""

from pathlib import Path

import pytest
import torch

from tests.helpers import tiny_distill as td
from tide_megatron.config import config_from_dict
from tide_megatron.training.trainer import DistillTrainer

SEQ, BLOCK, STEPS = 64, 16, 4


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("seeds")
    td.write_student(root / "student")
    td.write_moe_teacher(root / "moe")
    return root


def _train(artifacts: Path, out: Path, seed: int) -> dict:
    raw = {"preset": "a_tide_cross", "output_dir": str(out),
           "student": {"checkpoint": str(artifacts / "student"), "seq_length": SEQ, "block_size": BLOCK},
           "teacher": {"checkpoint": str(artifacts / "moe"), "dtype": "fp32"},
           "data": {"micro_batch_size": 2, "num_workers": 0},
           "optim": {"train_steps": STEPS, "lr": 1e-3, "seed": seed},
           "precision": {"dtype": "fp32"},
           "checkpoint": {"resume": "none", "save_interval": 1000, "save_at_end": False},
           "logging": {"log_interval": 1, "tensorboard": False}}
    trainer = DistillTrainer(config_from_dict(raw), td.make_dataset(32, "A", seq_length=SEQ))
    try:
        init = {k: v.detach().clone() for k, v in trainer.model.module.state_dict().items()
                if isinstance(v, torch.Tensor) and not k.endswith("_extra_state")}
        order = [trainer.batches.batch_at(k) for k in range(STEPS)]
        noise = trainer.collator([trainer.train_data[i] for i in range(4)])  # the same samples under this seed
        trainer.run()
        losses = [v for _, v in trainer.logger.history["loss/total"]]
    finally:
        trainer.close()
    return {"init": init, "order": order, "t": noise["t"], "masked": noise["student_mask"], "losses": losses}


def test_same_seed_repeats_exactly_and_another_seed_differs(artifacts, tmp_path):
    a, again, b = (_train(artifacts, tmp_path / name, seed) for name, seed in (("a", 7), ("again", 7), ("b", 8)))
    assert len(a["losses"]) == STEPS
    assert a["losses"] == again["losses"] and a["order"] == again["order"]  # bit for bit
    assert torch.equal(a["t"], again["t"]) and torch.equal(a["masked"], again["masked"])
    # another seed: another data order, other noise on the very same samples, other losses
    assert a["order"] != b["order"]
    assert not torch.equal(a["t"], b["t"]) and not torch.equal(a["masked"], b["masked"])
    assert all(x != y for x, y in zip(a["losses"], b["losses"]))
    # the init is the checkpoint's whatever the seed
    assert a["init"].keys() == b["init"].keys() and all(torch.equal(a["init"][k], b["init"][k]) for k in a["init"])


def test_a_run_that_fails_leaves_results_saying_so(artifacts, tmp_path):
    """A real failure (the loss overflows under an absurd learning rate): results.json says failed, and why."""
    from tide_megatron.report.run_dir import read_run, run_recorded

    raw = {"preset": "a_tide_cross", "output_dir": str(tmp_path / "run"),
           "student": {"checkpoint": str(artifacts / "student"), "seq_length": SEQ, "block_size": BLOCK},
           "teacher": {"checkpoint": str(artifacts / "moe"), "dtype": "fp32"},
           "data": {"micro_batch_size": 2, "num_workers": 0},
           "optim": {"train_steps": 6, "lr": 1e30, "warmup_ratio": 0.0, "clip_grad": 0.0, "seed": 7},
           "precision": {"dtype": "fp32"},
           "checkpoint": {"resume": "none", "save_interval": 1000, "save_at_end": False},
           "logging": {"log_interval": 1, "tensorboard": False}}
    trainer = DistillTrainer(config_from_dict(raw), td.make_dataset(32, "A", seq_length=SEQ))
    try:
        with pytest.raises(FloatingPointError, match="loss is"):
            run_recorded(trainer)
    finally:
        trainer.close()
    rec = read_run(tmp_path / "run")
    assert rec.status == "failed" and "FloatingPointError: loss is" in rec.reason and rec.seed == 7
    assert rec.metrics == {} and 0 < rec.step < 6

"""Issue 11 item 1 on 2 ranks: every collective of a trainer step gets tensors on the model's device.

Under `tests.helpers.device_check.host_is_another_device` host memory is a device of its own, and a collective
over a host tensor is recorded (NCCL refuses them). Here the collectives are real: the student's DP=2 gradient
reduction, the teacher's payload exchange over its TP=2 group (pipeline B) or the EP=2 expert all-to-all
(pipeline A), the logging all-reduce, the preemption flag every step and the validation all-reduce.
"""

import pytest
import torch.distributed as dist

from tests.helpers import tiny_distill as td
from tests.helpers.device_check import host_is_another_device
from tests.helpers.multirank import shared_artifacts, shared_dir, tiny_config
from tide_megatron.training.trainer import DistillTrainer


@pytest.fixture(scope="module")
def artifacts():
    return shared_artifacts("device-artifacts")


@pytest.mark.parametrize("variant", ["a_tide_cross", "b_tide_shared"])
def test_every_collective_of_a_step_is_over_model_device_tensors(closing, artifacts, monkeypatch, variant):
    pipe = "A" if variant.startswith("a_") else "B"
    cfg = tiny_config(artifacts, variant, shared_dir(variant), optim={"train_steps": 1},
                      checkpoint={"save_on_signal": True}, logging={"tensorboard": False})
    trainer = closing(DistillTrainer(cfg, td.make_dataset(8, pipe), valid_data=td.make_dataset(4, pipe, seed=3)))
    with host_is_another_device(monkeypatch) as checker:
        summary = trainer.run()
    assert summary["final_step"] == 1
    report = "\n".join(str(v) for v in checker.violations[:8])
    assert checker.violations == [], f"rank {dist.get_rank()}: {len(checker.violations)} offences:\n{report}"
    # payload exchange (B) or expert all-to-all (A), DDP reduce-scatter + all-gather, logging, preemption, eval
    assert checker.collectives >= 8, checker.collectives

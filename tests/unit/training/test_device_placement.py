"""Issue 11 item 1: one full trainer step keeps every tensor on the model's device (single process).

`tests.helpers.device_check.host_is_another_device` makes host memory a device of its own on CPU (host tensors
report ``meta``; a TorchDispatchMode checks every op and every collective), so a batch that is never moved to
the process device, or a factory call without ``device=``, meets the model's weights where CUDA would raise.
The 2-rank counterpart (collectives of the payload exchange, the logging and the preemption flag over real
groups) is tests/multirank/test_device_placement.py.
"""

from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from tests.helpers import tiny_distill as td
from tests.helpers.device_check import HostTensor, host_is_another_device, to_host
from tide_megatron.config import config_from_dict
from tide_megatron.data.batch import DistillBatch
from tide_megatron.distributed import init_distributed
from tide_megatron.training import trainer as trainer_module
from tide_megatron.training.trainer import DistillTrainer

SEQ, BLOCK = 48, 16


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tiny_distill")
    return td.write_checkpoints(root)


def _trainer(artifacts: Path, out: Path, variant: str, objective: dict = None, teacher_template: int = 3,
             **student) -> DistillTrainer:
    pipe = "A" if variant.startswith("a_") else "B"
    raw = {"preset": variant, "output_dir": str(out),
           "student": {"checkpoint": str(artifacts / "student"), "seq_length": SEQ, "block_size": BLOCK, **student},
           "teacher": {"checkpoint": str(artifacts / ("moe" if pipe == "A" else "dense")), "dtype": "fp32"},
           "data": {"micro_batch_size": 2, "num_workers": 0},
           "optim": {"train_steps": 1, "lr": 1e-3},
           "objective": {"shared_vocab": td.STUDENT_VOCAB - 8, **(objective or {})},
           "precision": {"dtype": "fp32"},
           "checkpoint": {"resume": "none", "save_interval": 1000, "save_at_end": False, "save_on_signal": True},
           "logging": {"log_interval": 1, "tensorboard": False}}
    data = {"seq_length": SEQ} if pipe == "A" else {"seq_length": SEQ, "teacher_template": teacher_template}
    return DistillTrainer(config_from_dict(raw), td.make_dataset(8, pipe, **data),
                          valid_data=td.make_dataset(4, pipe, seed=5, **data))


def _report(checker) -> str:
    return "\n".join(str(v) for v in checker.violations[:8])


# ---- the harness itself: what it flags is what CUDA refuses, and only that ----------------------------------


def test_harness_flags_host_tensors_meeting_model_tensors_and_collectives_over_host_tensors(monkeypatch):
    init_distributed()
    weight = torch.randn(4, 3)  # a "model" tensor: created before the block, on the process device
    with host_is_another_device(monkeypatch) as checker:
        ids = torch.tensor([0, 2])  # no device=: host memory
        assert isinstance(ids, HostTensor) and ids.device.type == "meta"
        torch.nn.functional.embedding(ids, weight)  # a batch never moved: refused
        weight + torch.zeros(3)  # a factory without device=: refused
        dist.all_reduce(torch.ones(2))  # NCCL refuses host tensors
    ops = [v.op.split(" ")[0] for v in checker.violations]
    assert ops == ["aten::embedding", "aten::add", "c10d::allreduce_"], _report(checker)
    assert "test_device_placement.py" in checker.violations[0].frames[-1]


def test_harness_allows_what_cuda_allows(monkeypatch):
    init_distributed()
    weight = torch.randn(4, 3)
    with host_is_another_device(monkeypatch) as checker:
        ids = torch.tensor([0, 2])
        moved = ids.to(weight.device)  # the move itself
        assert not isinstance(moved, HostTensor)
        rows = torch.nn.functional.embedding(moved, weight)
        rows * torch.tensor(2.0)  # a 0-dim host scalar
        weight[ids]  # host index tensors
        weight[ids] = torch.zeros(2, 3, device=weight.device)
        torch.zeros(3, device=weight.device).copy_(torch.ones(3))  # host -> device copies
        buf = torch.zeros(2, device=weight.device)
        dist.all_reduce(buf)
        back = rows.sum().item() + float(ids.sum()) + len(ids.tolist())
    assert checker.violations == [], _report(checker)
    assert checker.collectives == 1 and back == back


def test_a_dataloader_hands_over_host_memory(monkeypatch):
    from tide_megatron.training import data

    with host_is_another_device(monkeypatch):
        loader = data.DataLoader([torch.arange(3)], batch_size=1)
        (batch,) = list(loader)
    assert isinstance(batch, HostTensor) and torch.equal(batch.elem, torch.arange(3)[None])


# ---- the trainer ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant,options", [
    ("a_tide_cross", {}),  # chunks, LLaDA2 teacher, chunked head over compacted student inputs
    ("a_tide_shared", {}),  # chunk TIDAL, CompDemo's two LLaDA2 passes merged
    ("b_tide_shared", {}),  # pairs, WeDLM layout, CompDemo's two passes in one compacted teacher sequence
    ("b_kl", {"logits_chunk_seqs": 0, "skip_unmasked_blocks": False}),  # the full [xt ; x0] student forward
    ("b_kl", {"objective": {"mode": "taid", "compdemo": True}, "teacher_template": 0}),  # unaligned (§6)
])
def test_one_trainer_step_keeps_every_tensor_on_the_model_device(artifacts, tmp_path, monkeypatch, variant, options):
    """Teacher payload, student loss, backward, optimizer step, logging, preemption check and validation, with
    the batches arriving from the DataLoader in host memory: no op mixes host and model tensors."""
    trainer = _trainer(artifacts, tmp_path, variant, **options)
    try:
        with host_is_another_device(monkeypatch) as checker:
            summary = trainer.run(stop_after=1)
        assert summary["final_step"] == 1 and torch.isfinite(torch.tensor(summary["last_total"]))
        assert checker.violations == [], f"{len(checker.violations)} ops mixed host and model tensors:\n" \
                                         f"{_report(checker)}"
        assert checker.ops > 1000  # the whole step ran under the check
    finally:
        trainer.close()


def test_a_batch_that_is_never_moved_is_caught(artifacts, tmp_path, monkeypatch):
    """Without the move of the data loader, the first op that meets a weight is the teacher's embedding."""
    trainer = _trainer(artifacts, tmp_path, "a_tide_cross")
    monkeypatch.setattr(DistillBatch, "to", lambda self, device, non_blocking=False: self)
    try:
        with host_is_another_device(monkeypatch) as checker:
            trainer.run(stop_after=1)
    finally:
        trainer.close()
    assert checker.violations, "a batch left in host memory went unnoticed"
    first = checker.violations[0]
    assert first.op == "aten::embedding" and "host int64" in first.inputs, _report(checker)


def test_a_device_less_factory_in_the_step_is_caught(artifacts, tmp_path, monkeypatch):
    """Someone adds ``torch.zeros(n)`` (no ``device=``) to the student's inputs: the harness names the op."""
    trainer = _trainer(artifacts, tmp_path, "b_kl", logits_chunk_seqs=0, skip_unmasked_blocks=False)
    real = trainer_module.bd3lm_inputs

    def with_a_host_offset(xt, x0, order):
        ids, pos = real(xt, x0, order)
        return ids, pos + torch.zeros(pos.shape[1], dtype=pos.dtype)

    monkeypatch.setattr(trainer_module, "bd3lm_inputs", with_a_host_offset)
    try:
        with host_is_another_device(monkeypatch) as checker:
            trainer.run(stop_after=1)
    finally:
        trainer.close()
    assert checker.violations, "a device-less torch.zeros in the step went unnoticed"
    first = checker.violations[0]
    assert first.op == "aten::add" and "host int64[96]" in first.inputs, _report(checker)
    assert any("with_a_host_offset" in f for f in first.frames)


def test_to_host_wraps_nested_batches():
    out = to_host({"a": torch.ones(2), "b": [torch.zeros(1)]})
    assert isinstance(out["a"], HostTensor) and isinstance(out["b"][0], HostTensor)

"""The distillation trainer at four ranks (issue: beyond two ranks, item 2): student DP4 and TP2xDP2 with the
gradient of one real training step equal to one rank's gradient of the mean of the micro-batch losses (§9.9);
a variant through the real trainer for every teacher layout (LLaDA2 TP2xEP2, PP2xEP2, EP4; WeDLM TP2xPP2), each
layout's payloads equal to a one-rank teacher's; exact resume at four ranks."""

import math
import tempfile
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from safetensors.torch import save_file

from tide_megatron.diffusion.inputs import bd3lm_inputs
from tide_megatron.distributed import ParallelLayout, build_model_grid
from tide_megatron.models.convert.weights import mapped_tensors
from tide_megatron.models.qwen3.convert import QWEN3
from tide_megatron.models.safetensors_reader import SafetensorsReader
from tide_megatron.teacher.passes import build_teacher_passes, run_teacher_passes
from tide_megatron.training.checkpoint import list_checkpoints
from tide_megatron.training.data import micro_batches
from tide_megatron.training.models import build_teacher
from tide_megatron.training.trainer import DistillTrainer
from tests.helpers import tiny_distill as td
from tests.helpers.multirank import gather_reduced_gradient, shared_artifacts, shared_dir, tiny_config


@pytest.fixture(scope="module")
def artifacts():
    return shared_artifacts("artifacts4")


@pytest.fixture
def make_trainer(closing):
    def make(cfg, n_train=32):
        pipe = "A" if cfg.teacher.arch == "llada2" else "B"
        return closing(DistillTrainer(cfg, td.make_dataset(n_train, pipe)))

    return make


def _first_batch(trainer):
    return next(iter(micro_batches(trainer.train_data, trainer.batches, trainer.collator, 0, 1)))


def _teacher_layout(trainer) -> tuple[int, int, int]:
    pgs = trainer.teacher_grid.pgs
    return dist.get_world_size(pgs.tp), dist.get_world_size(pgs.pp), dist.get_world_size(pgs.ep)


# ------------------------------------------------------------------------------------------------------
# Gradient parity: DDP (+ TP) step == one rank on the mean of the data-parallel micro-batch losses
# ------------------------------------------------------------------------------------------------------



def _reference_loss(trainer, reference, batch, payload) -> torch.Tensor:
    """One rank, TP=1, full logits, no compaction: CE + the mode's TIDE term of one micro-batch."""
    L = batch.x0.shape[1]
    ids, pos = bd3lm_inputs(batch.xt, batch.x0, order="xt_x0")
    logits = reference(ids, pos, trainer.student_mask(ids.shape[0]), logits_rows=slice(0, L))
    inputs = trainer._loss_inputs(batch, payload, logits)
    return trainer.objective(inputs, step=0, total_steps=trainer.state.total_steps, tp_group=None).total


def _student_mapping(artifacts: Path):
    return QWEN3.mapping(QWEN3.args_from_hf(str(artifacts / "student")))


def _expected_shards(model, reference, grads: dict[int, torch.Tensor], mapping, tmp: Path) -> dict[str, torch.Tensor]:
    """The reference (TP=1) gradients cut to this rank's tensor-parallel shards by the Qwen3 weight mapping:
    written as an HF checkpoint of gradients and read back the way the loader reads weights."""
    hf = {}
    for _, tensor, rule, names in mapped_tensors(reference, mapping):
        for name, part in zip(names, mapping.split(rule, grads[id(tensor)])):
            hf[name] = part.contiguous()
    tmp.mkdir(parents=True, exist_ok=True)
    save_file(hf, str(tmp / "model.safetensors"))
    reader = SafetensorsReader(tmp)
    pgs = model.pg_collection
    rank, size = dist.get_rank(pgs.tp), dist.get_world_size(pgs.tp)
    try:
        return {name: mapping.read_shard(rule, names, reader, tuple(tensor.shape), rank, size, name)
                for name, tensor, rule, names in mapped_tensors(model, mapping)}
    finally:
        reader.close()


@pytest.mark.parametrize("name, variant, student, teacher", [
    ("dp4", "a_tide_shared", {"tp": 1}, {"tp": 2, "ep": 2}),
    ("tp2_dp2", "b_tide_shared", {"tp": 2}, {"tp": 2, "pp": 2}),
])
def test_training_step_gradient_equals_one_rank_on_the_data_parallel_batches(make_trainer, artifacts, name,
                                                                            variant, student, teacher):
    cfg = tiny_config(artifacts, variant, shared_dir(f"grad-{name}"), student=student, teacher=teacher)
    trainer = make_trainer(cfg)
    assert trainer.student_dp == 4 // student["tp"]
    assert _teacher_layout(trainer) == (teacher.get("tp", 1), teacher.get("pp", 1), teacher.get("ep", 1))
    batch = _first_batch(trainer)
    payload = trainer.teacher_payload(batch)
    module = trainer.model.module
    grads = {}

    def capture_then_skip():
        """Stands in for the optimizer step: record the reduced gradients, leave the weights as they are."""
        gather_reduced_gradient(trainer.model)
        grads.update({n: p.main_grad.clone() for n, p in module.named_parameters()})
        return True, 0.0, 0

    trainer.optimizer.step = capture_then_skip
    trainer.train_step([batch])

    # The reference: every data-parallel rank's micro-batch and payload, on one rank without TP.
    everyone = [None] * trainer.student_dp
    dist.all_gather_object(everyone, (batch, payload), group=trainer.student_grid.pgs.dp)
    grid = build_model_grid(ParallelLayout(), "reference")
    try:
        reference, _, _ = QWEN3.build_from_hf(artifacts / "student", grid.pgs, torch.float32)
        params = list(reference.parameters())
        each = [torch.autograd.grad(_reference_loss(trainer, reference, b, p), params) for b, p in everyone]
        mean = [torch.stack(g).mean(0) for g in zip(*each)]
        own = each[trainer.student_grid.dp_rank]
        tmp = Path(tempfile.mkdtemp(dir=artifacts, prefix=f".grads-{dist.get_rank()}-"))
        mapping = _student_mapping(artifacts)
        want = _expected_shards(module, reference, {id(p): g for p, g in zip(params, mean)}, mapping, tmp)
        alone = _expected_shards(module, reference, {id(p): g for p, g in zip(params, own)}, mapping, tmp / "own")
    finally:
        grid.close()
    by_param = {id(t): n for n, t, _, _ in mapped_tensors(module, mapping)}
    compared, differs = 0, False
    for pname, p in module.named_parameters():
        key = by_param[id(p)]
        torch.testing.assert_close(grads[pname], want[key], atol=1e-6, rtol=1e-5, msg=f"{name}: {pname}")
        differs |= not torch.allclose(want[key], alone[key], atol=1e-5, rtol=1e-3)
        compared += 1
    assert compared == len(list(module.parameters())) and differs  # a rank's own batch alone gives other grads


# ------------------------------------------------------------------------------------------------------
# Every teacher layout through the real trainer
# ------------------------------------------------------------------------------------------------------

TEACHER_LAYOUTS = {
    "llada2_tp2_ep2": ("a_tide_cross", {"tp": 2, "ep": 2}),
    "llada2_pp2_ep2": ("a_calm", {"tp": 1, "pp": 2, "ep": 2}),
    "llada2_ep4": ("a_tide_shared", {"tp": 1, "ep": 4}),
    "wedlm_tp2_pp2": ("b_tide_cross", {"tp": 2, "pp": 2}),
}


@pytest.mark.parametrize("name", list(TEACHER_LAYOUTS))
def test_teacher_layout_through_the_trainer(make_trainer, artifacts, name, closing):
    """The layout's payloads equal a one-rank teacher's on the same passes; two real steps, every term finite."""
    variant, teacher = TEACHER_LAYOUTS[name]
    cfg = tiny_config(artifacts, variant, shared_dir(f"layout-{name}"), teacher=teacher)
    trainer = make_trainer(cfg)
    assert _teacher_layout(trainer) == (teacher.get("tp", 1), teacher.get("pp", 1), teacher.get("ep", 1))
    assert trainer.student_dp == 4
    batch = _first_batch(trainer)
    got = trainer.teacher_payload(batch)

    single = closing(build_model_grid(ParallelLayout(), "one-rank teacher"))
    one = build_teacher(cfg.teacher, single)
    passes = build_teacher_passes(batch, trainer.teacher_mask_id, trainer.teacher_pad_id, cfg.student.block_size,
                                  cfg.objective.shared_vocab or one.vocab_size)
    want = run_teacher_passes(one.engine, passes, None)
    assert got.shape == want.shape and want.abs().sum() > 0
    torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-5)

    summary = trainer.run()
    hist = trainer.logger.history
    assert summary["final_step"] == 2
    for key in ("loss/total", "loss/ce", "grad_norm"):
        assert len(hist[key]) == 2 and all(math.isfinite(v) for _, v in hist[key]), (key, hist[key])


# ------------------------------------------------------------------------------------------------------
# Exact resume at four ranks
# ------------------------------------------------------------------------------------------------------


def _losses(trainer) -> list[float]:
    return [v for _, v in trainer.logger.history["loss/total"]]


def test_exact_resume_at_four_ranks(make_trainer, artifacts):
    """4 steps straight == 2 steps, stop, a fresh trainer resumes, 2 more (student TP2xDP2, teacher TP2xEP2)."""
    common = dict(student={"tp": 2}, teacher={"tp": 2, "ep": 2}, optim={"train_steps": 4, "lr": 2e-3},
                  checkpoint={"save_interval": 2, "resume": "auto"}, logging={"log_interval": 1, "tensorboard": False})
    straight = make_trainer(tiny_config(artifacts, "a_tide_shared", shared_dir("straight4"), **common))
    straight.run()
    cfg = tiny_config(artifacts, "a_tide_shared", shared_dir("resumed4"), **common)
    first = make_trainer(cfg)
    first.run(stop_after=2)
    assert first.state.step == 2 and len(list_checkpoints(cfg.checkpoint.dir)) == 1
    second = make_trainer(cfg)
    assert second.state.step == 2 and second.state.consumed_micro_batches == 2
    second.run()
    assert len(_losses(straight)) == 4
    assert _losses(straight)[:2] + _losses(second) == _losses(straight)

"""The distillation trainer on 2 gloo ranks (issue 6, "Must show"): the six paper variants with a tiny
teacher (EP=2 MoE for pipeline A, TP=2 dense for pipeline B) and a DP=2 student; held-out loss falls;
exact resume; SIGTERM leaves a checkpoint that loads."""

import math
import os
import signal
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from tide_megatron.training.checkpoint import list_checkpoints, validate_checkpoint_dir
from tide_megatron.training.trainer import DistillTrainer
from tests.helpers import tiny_distill as td
from tests.helpers.multirank import shared_artifacts, shared_dir, tiny_config

EXPECTED_TERMS = {
    "a_calm": "alm", "a_tide_cross": "reverse_alm", "a_tide_shared": "alm_taid",
    "b_kl": "kl_aligned", "b_tide_cross": "reverse_kl_aligned", "b_tide_shared": "taid_aligned",
}


@pytest.fixture(scope="module")
def artifacts():
    return shared_artifacts("artifacts")


def _config(artifacts: Path, variant: str, out: Path, **sections):
    return tiny_config(artifacts, variant, out, **sections), ("A" if variant.startswith("a_") else "B")


@pytest.fixture
def make_trainer(closing):
    """Build a trainer on the tiny datasets; it is closed (its groups freed) after the test."""

    def make(cfg, pipe, n_train=16, n_valid=0):
        valid = td.make_dataset(n_valid, pipe, seed=99) if n_valid else None
        return closing(DistillTrainer(cfg, td.make_dataset(n_train, pipe), valid_data=valid))

    return make


def _first_batch(trainer):
    """The trainer's first micro-batch, collated and noised as in training."""
    from tide_megatron.training.data import micro_batches

    return next(iter(micro_batches(trainer.train_data, trainer.batches, trainer.collator, 0, 1)))


@pytest.mark.parametrize("variant", sorted(EXPECTED_TERMS))
def test_variant_runs_with_every_loss_term_finite_and_logged(make_trainer, artifacts, variant):
    out = shared_dir(variant)
    cfg, pipe = _config(artifacts, variant, out)
    trainer = make_trainer(cfg, pipe)
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


def test_held_out_loss_falls_over_50_steps(make_trainer, artifacts):
    out = shared_dir("falls")
    cfg, pipe = _config(artifacts, "a_tide_cross", out, optim={"train_steps": 50, "lr": 3e-3, "warmup_ratio": 0.1},
                        logging={"log_interval": 25, "eval_batches": 4, "tensorboard": False})
    trainer = make_trainer(cfg, pipe, n_train=64, n_valid=16)
    before = trainer.evaluate()["eval/total"]
    trainer.run()
    after = trainer.logger.history["eval/total"][-1][1]
    trainer.close()
    assert after < 0.8 * before, (before, after)


def _losses(trainer) -> list[float]:
    return [v for _, v in trainer.logger.history["loss/total"]]


def test_exact_resume_matches_an_uninterrupted_run(make_trainer, artifacts):
    """6 steps straight == 3 steps, stop, a fresh trainer resumes from the checkpoint, 3 more steps."""
    common = dict(optim={"train_steps": 6, "lr": 2e-3}, checkpoint={"save_interval": 3, "resume": "auto"},
                  logging={"log_interval": 1, "tensorboard": False})
    cfg, pipe = _config(artifacts, "b_tide_shared", shared_dir("straight"), **common)
    straight = make_trainer(cfg, pipe)
    straight.run()
    cfg, pipe = _config(artifacts, "b_tide_shared", shared_dir("resumed"), **common)
    first = make_trainer(cfg, pipe)
    first.run(stop_after=3)
    assert first.state.step == 3 and len(list_checkpoints(cfg.checkpoint.dir)) == 1
    del first
    second = make_trainer(cfg, pipe)  # resume=auto finds step 3
    assert second.state.step == 3 and second.state.total_steps == 6
    second.run()
    assert _losses(straight)[:3] + _losses(second) == _losses(straight)
    assert len(_losses(straight)) == 6


def test_sigterm_mid_run_leaves_a_checkpoint_that_loads(make_trainer, artifacts):
    cfg, pipe = _config(artifacts, "a_tide_shared", shared_dir("sigterm"),
                        optim={"train_steps": 8}, checkpoint={"save_interval": 1000, "resume": "auto"},
                        logging={"tensorboard": False})
    trainer = make_trainer(cfg, pipe)
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
    resumed = make_trainer(cfg, pipe)
    assert resumed.state.step == 2
    for p_saved, p_loaded in zip(trainer.model.parameters(), resumed.model.parameters()):
        assert torch.equal(p_saved, p_loaded)
    resumed.run(stop_after=1)
    assert resumed.state.step == 3


@pytest.mark.parametrize("variant", ["a_tide_shared", "b_tide_cross"])
def test_chunked_student_head_matches_full_logits_on_the_real_student(make_trainer, artifacts, variant):
    """The trainer's sequence-chunked output layer + loss equals the loss on full [b, L, V] logits."""
    cfg, pipe = _config(artifacts, variant, shared_dir(f"chunked-{variant}"))
    trainer = make_trainer(cfg, pipe)
    batch = _first_batch(trainer)
    payload = trainer.teacher_payload(batch)
    chunked = trainer.student_loss(batch, payload)
    trainer.cfg.student.logits_chunk_seqs = 0
    full = trainer.student_loss(batch, payload)
    assert chunked.keys() == full.keys()
    for key in full:
        assert chunked[key] == pytest.approx(full[key], rel=1e-5, abs=1e-6), key


def test_gradient_accumulation_counts_optimizer_steps(make_trainer, artifacts):
    """grad_accum=2: two micro-batches per optimizer step; TIDAL progress and the data position count steps."""
    cfg, pipe = _config(artifacts, "b_tide_shared", shared_dir("accum"),
                        optim={"train_steps": 3, "grad_accum": 2}, logging={"tensorboard": False})
    trainer = make_trainer(cfg, pipe, n_train=24)
    seen = []
    original = trainer.train_step

    def record(batches):
        seen.append((len(batches), trainer.state.step))
        return original(batches)

    trainer.train_step = record
    trainer.run()
    assert seen == [(2, 0), (2, 1), (2, 2)]
    assert trainer.state.step == 3 and trainer.state.consumed_micro_batches == 6
    assert trainer.batches.per_epoch == 6 and trainer.state.total_steps == 3


def test_compdemo_passes_sharing_x0_equal_two_separate_teacher_passes(make_trainer, artifacts):
    """Pipeline B: [x0 ; xt_1 ; xt_2] in one forward gives the rows of two [x0 ; xt_p] forwards (TP=2 teacher)."""
    from tide_megatron.align.rows import aligned_rows
    from tide_megatron.diffusion.inputs import bd3lm_inputs
    from tide_megatron.diffusion.masks import block_diffusion_mask
    from tide_megatron.distributed import payload_exchange as px

    cfg, pipe = _config(artifacts, "b_tide_shared", shared_dir("sharedx0"))
    trainer = make_trainer(cfg, pipe)
    batch = _first_batch(trainer)
    assert batch.num_passes == 2
    got = trainer.teacher_payload(batch)

    # The reference: each pass as its own full [x0 ; xt_p] forward, every rank padded to the group's length.
    longest = torch.tensor([batch.teacher_ids.shape[1]], dtype=torch.int64)
    dist.all_reduce(longest, op=dist.ReduceOp.MAX, group=trainer.teacher_group)
    Lt = int(longest.item())
    Lt += -Lt % cfg.student.block_size
    extra = Lt - batch.teacher_ids.shape[1]
    ids = torch.nn.functional.pad(batch.teacher_ids, (0, extra), value=trainer.teacher_pad_id)
    att = torch.nn.functional.pad(batch.teacher_attention, (0, extra), value=False)
    passes = torch.nn.functional.pad(batch.teacher_pass_masks, (0, extra), value=False)
    rows = aligned_rows(batch.masked, batch.pair_student, batch.pair_teacher, batch.pair_valid)
    which = batch.take_pass2[rows.batch, rows.teacher_pos]
    expected = torch.empty_like(got)
    for p in range(2):
        xt = torch.where(passes[p], trainer.teacher_mask_id, ids)
        seq, pos = bd3lm_inputs(xt, ids, order="x0_xt")
        gathered, info = px.gather_teacher_inputs({"ids": seq, "pos": pos, "att": att.repeat(1, 2)},
                                                  {"ids": trainer.teacher_pad_id, "pos": 0, "att": False},
                                                  trainer.teacher_group)
        sel = which == bool(p)
        req = torch.stack([rows.batch[sel], Lt + rows.teacher_pos[sel]], 1)
        all_rows, counts = px.gather_rows(req, info, trainer.teacher_group)
        mask = block_diffusion_mask(Lt, cfg.student.block_size, "x0_xt")[None] & gathered["att"][:, None, :]
        out = trainer.teacher.engine.logit_rows(gathered["ids"], all_rows, cfg.objective.shared_vocab,
                                                attention_mask=mask, position_ids=gathered["pos"])
        expected[sel] = px.own_rows(out, counts, trainer.teacher_group)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("variant", ["a_tide_shared", "a_calm"])
def test_teacher_log_probs_only_where_a_chunk_loss_reads_them(make_trainer, artifacts, variant, monkeypatch):
    """Pipeline A asks the teacher only for active-chunk tokens (in the pass that wins there): same loss."""
    from tide_megatron.teacher import passes

    cfg, pipe = _config(artifacts, variant, shared_dir(f"needed-{variant}"))
    trainer = make_trainer(cfg, pipe)
    batch = _first_batch(trainer)
    restricted = trainer.teacher_payload(batch)
    monkeypatch.setattr(passes, "needed_teacher_tokens",
                        lambda b: torch.ones(b.num_passes, *b.teacher_ids.shape, dtype=torch.bool))
    full = trainer.teacher_payload(batch)
    needed = (batch.teacher_chunk >= 0) & batch.active.gather(1, batch.teacher_chunk.clamp_min(0))
    assert needed.any() and (restricted[~needed] == 0).all()
    torch.testing.assert_close(restricted[needed], full[needed])
    a, b = trainer.student_loss(batch, restricted), trainer.student_loss(batch, full)
    assert a == pytest.approx(b, rel=1e-6)

"""Spec §9 pitfalls at the trainer level (single process, tiny checkpoints; see docs/PITFALLS.md).

Every reference here is independent of the code under test: transformers' own Qwen3 class for the student and
the dense (WeDLM-layout) teacher, the plain-PyTorch LLaDA2 reference for the MoE teacher, attention masks
written from the rules of spec §1.4 / §2.1 / §2.2, and the CE of §1.5 in float64.
"""

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.helpers import tiny_distill as td
from tests.helpers.reference_masks import bd3lm_allowed
from tests.reference.llada2_reference import LLaDA2MoeConfig, LLaDA2MoeModelLM
from tide_megatron.config import config_from_dict
from tide_megatron.data.stage import AlignmentStage, collate_samples
from tide_megatron.data.batch import DistillBatch
from tide_megatron.models.convert.reference import load_hf_reference
from tide_megatron.training.trainer import DistillTrainer

SEQ, BLOCK = 64, 16  # the teacher (3 template tokens + ~31) fills to 48 != 64: its own length
SHARED = td.STUDENT_VOCAB - 8


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tiny_distill")
    return td.write_checkpoints(root)


def _trainer(artifacts: Path, out: Path, variant: str, teacher_dir: Path = None, **optim) -> DistillTrainer:
    pipe = "A" if variant.startswith("a_") else "B"
    teacher_dir = teacher_dir or artifacts / ("moe" if pipe == "A" else "dense")
    raw = {"preset": variant, "output_dir": str(out),
           "student": {"checkpoint": str(artifacts / "student"), "seq_length": SEQ, "block_size": BLOCK},
           "teacher": {"checkpoint": str(teacher_dir), "dtype": "fp32"},
           "data": {"micro_batch_size": 2, "num_workers": 0},
           "optim": {"train_steps": 3, "lr": 1e-3, **optim},
           "objective": {"shared_vocab": SHARED},
           "precision": {"dtype": "fp32"},
           "checkpoint": {"resume": "none", "save_interval": 1000, "save_at_end": False},
           "logging": {"log_interval": 1000, "tensorboard": False}}
    return DistillTrainer(config_from_dict(raw), td.make_dataset(16, pipe, seq_length=SEQ))


def _batch(trainer: DistillTrainer, first: int = 0) -> DistillBatch:
    return DistillBatch.from_stage(trainer.collator([trainer.train_data[i] for i in range(first, first + 2)]))



def _additive(allowed: torch.Tensor) -> torch.Tensor:
    return torch.zeros(allowed.shape).masked_fill(~allowed, torch.finfo(torch.float32).min)


def _reference_student_logits(artifacts: Path, batch: DistillBatch) -> torch.Tensor:
    """transformers' Qwen3 on [xt ; x0], positions [0..L-1, 0..L-1], the §1.4 mask only; the xt half, float64."""
    reference = load_hf_reference(str(artifacts / "student"))
    b, L = batch.x0.shape
    ids = torch.cat([batch.xt, batch.x0], 1)
    pos = torch.arange(L).repeat(2).expand(b, 2 * L)
    mask = _additive(bd3lm_allowed(L, BLOCK, x0_first=False))[None, None].expand(b, 1, 2 * L, 2 * L)
    with torch.no_grad():
        return reference(input_ids=ids, position_ids=pos, attention_mask=mask).logits[:, :L].double()


def _reference_ce(logits: torch.Tensor, batch: DistillBatch) -> float:
    """§1.5: sum of w(t) * NLL at the masked positions (target at its own position) / number of maskable tokens."""
    nll = -torch.log_softmax(logits, -1).gather(-1, batch.x0[..., None]).squeeze(-1)
    return ((nll * batch.masked / (batch.t.double()[:, None] + 1e-6)).sum() / batch.maskable.sum()).item()


@pytest.mark.parametrize("variant", ["b_tide_shared", "a_tide_shared"])
def test_tidal_progress_counts_optimizer_steps_not_micro_batches(artifacts, tmp_path, variant):
    """§9.14: with 2 micro-batches per optimizer step, both see the same 0-based optimizer step, and the
    total is the number of optimizer steps."""
    trainer = _trainer(artifacts, tmp_path, variant, grad_accum=2)
    seen: list[list[tuple[int, int]]] = []
    objective, student_loss = trainer.objective, trainer.student_loss

    class Recorder:  # passes every call through to the real objective, noting (step, total_steps)
        components, config = objective.components, objective.config

        def __call__(self, inputs, step=0, total_steps=1, tp_group=None):
            seen[-1].append((step, total_steps))
            return objective(inputs, step=step, total_steps=total_steps, tp_group=tp_group)

    def per_micro_batch(*args, **kwargs):
        seen.append([])
        return student_loss(*args, **kwargs)

    trainer.objective, trainer.student_loss = Recorder(), per_micro_batch
    trainer.run()
    trainer.close()
    assert len(seen) == 6 and all(seen)
    for micro, calls in enumerate(seen):
        assert set(calls) == {(micro // 2, 3)}, (micro, calls)


def test_total_tidal_steps_are_optimizer_steps_per_epoch_times_epochs(artifacts, tmp_path):
    """§9.14: N_opt = epochs x optimizer steps per epoch (16 samples / micro-batch 2 / 2 accumulated = 4)."""
    trainer = _trainer(artifacts, tmp_path, "b_tide_shared", train_steps=0, epochs=2, grad_accum=2)
    assert trainer.state.total_steps == 8
    trainer.close()


def test_student_forward_is_xt_first_with_duplicated_positions_and_no_padding_mask(artifacts, tmp_path):
    """§9.3-9.5, §9.17c: the trainer's student logits equal transformers' Qwen3 on [xt ; x0] with positions
    [0..L-1, 0..L-1] and only the block-diffusion mask (pad tokens visible), read from the first half; the CE is
    §1.5 at the token's own position, divided by the maskable count."""
    trainer = _trainer(artifacts, tmp_path, "b_tide_shared")
    batch = _batch(trainer)
    assert (batch.labels == -100).any(dim=1).all() and (batch.x0 == td.STUDENT_IDS["student_pad"]).any()
    b = batch.x0.shape[0]
    want = _reference_student_logits(artifacts, batch)
    with torch.no_grad():
        got = trainer.student_forward(batch)
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-4)
    assert batch.masked.any()
    trainer.state.step = 2  # optimizer step 2 of 3: lambda_train = 0.7, a target well away from the student
    with torch.no_grad():
        payload = trainer.teacher_payload(batch)
        terms = trainer.student_loss(batch, payload)
    assert terms["loss/ce"] == pytest.approx(_reference_ce(want, batch), rel=1e-4)

    # §3 / §9.9b / §9.11a: TIDAL on the *live* student logits at the aligned masked positions, r constant,
    # lambda at optimizer step 2 of 3, midrange omega, T = 2, divided by |K| (not by the sum of omega).
    rows = [(k, int(s)) for k in range(b) for s, v in zip(batch.pair_student[k], batch.pair_valid[k])
            if v and batch.masked[k, s]]
    zs = torch.stack([want[k, s, :SHARED] for k, s in rows]) / 2.0
    zt = payload.double()[:, :SHARED] / 2.0
    t_rows = batch.t.double()[[k for k, _ in rows]]
    lam = (0.1 + 0.8 * 0.5 * (1 - math.cos(math.pi * 2 / 3))) * (1 - t_rows)
    omega = torch.exp(-((t_rows - 0.5) ** 2) / (2 * 0.15 ** 2))
    r = torch.softmax((1 - lam[:, None]) * zs + lam[:, None] * zt, -1)
    kl = (r * (r.clamp_min(1e-8).log() - torch.log_softmax(zs, -1))).sum(-1)
    assert terms["loss/taid_aligned"] == pytest.approx((4.0 * (omega * kl).sum() / len(rows)).item(), rel=1e-4)
    assert terms["loss/total"] == pytest.approx(terms["loss/ce"] + terms["loss/taid_aligned"], rel=1e-6)  # §9.20


def test_wedlm_payload_is_x0_first_from_the_xt_half_with_compdemo_merge(artifacts, tmp_path):
    """§9.4, §9.6b, §9.15, §9.16, §9.17a: the teacher rows the trainer hands the loss equal transformers' Qwen3
    on [x0 ; xt_pass] (duplicated positions, x0-first block mask over teacher indices, pad rows and columns
    blocked), read at L_t + teacher position, from pass 2 where the position is in M_A and pass 1 elsewhere,
    cut to the shared vocabulary."""
    trainer = _trainer(artifacts, tmp_path, "b_tide_shared")
    batch = _batch(trainer, first=4)
    assert batch.num_passes == 2 and batch.take_pass2.any()
    reference = load_hf_reference(str(artifacts / "dense"))
    mask_id = json.loads((artifacts / "dense" / "config.json").read_text())["mask_token_id"]
    b, Lt = batch.teacher_ids.shape
    assert Lt % BLOCK == 0 and Lt != SEQ  # the block mask must follow the teacher's own length (§9.6)
    real = batch.teacher_attention.repeat(1, 2)
    allowed = bd3lm_allowed(Lt, BLOCK, x0_first=True)[None] & real[:, :, None] & real[:, None, :]
    pos = torch.arange(Lt).repeat(2).expand(b, 2 * Lt)
    logits = []
    with torch.no_grad():
        for p in range(2):
            xt = torch.where(batch.teacher_pass_masks[p], mask_id, batch.teacher_ids)
            ids = torch.cat([batch.teacher_ids, xt], 1)
            logits.append(reference(input_ids=ids, position_ids=pos, attention_mask=_additive(allowed)[:, None])
                          .logits[:, Lt:])
        got = trainer.teacher_payload(batch)
    want = []
    for k in range(b):
        for s, t, v in zip(batch.pair_student[k], batch.pair_teacher[k], batch.pair_valid[k]):
            if v and batch.masked[k, s]:
                want.append(logits[int(batch.take_pass2[k, t])][k, t, :SHARED])
    assert got.shape == (len(want), SHARED)
    torch.testing.assert_close(got.double(), torch.stack(want).double(), rtol=1e-4, atol=1e-4)


def test_llada2_payload_is_one_bidirectional_sequence_with_the_teacher_mask_id(artifacts, tmp_path):
    """§9.1, §9.3, §9.7, §9.15, §9.17a: the per-token teacher log-probs the loss reads equal the plain LLaDA2
    reference on each pass (teacher ids with the teacher's own mask id, default positions, every real token
    visible to every real token, pad keys hidden), log p(clean id) at the token's own position, merged on M_A;
    the student's CE runs over the chunk-expanded mask (§9.8)."""
    trainer = _trainer(artifacts, tmp_path, "a_tide_shared")
    stage = trainer.collator([trainer.train_data[i] for i in range(2, 4)])
    batch = DistillBatch.from_stage(stage)
    assert batch.num_passes == 2 and batch.take_pass2.any() and not batch.teacher_attention.all()
    config = json.loads((artifacts / "moe" / "config.json").read_text())
    reference = LLaDA2MoeModelLM(LLaDA2MoeConfig(**config)).eval()
    state = {}
    for shard in sorted((artifacts / "moe").glob("*.safetensors")):
        state.update(load_file(str(shard)))
    reference.load_state_dict(state, strict=True)
    assert config["mask_token_id"] != td.STUDENT_IDS["student_mask"]
    logp = []
    with torch.no_grad():
        for p in range(2):
            ids = torch.where(batch.teacher_pass_masks[p], config["mask_token_id"], batch.teacher_ids)
            lp = reference(ids, attention_mask=batch.teacher_attention.long()).logits.double().log_softmax(-1)
            logp.append(lp.gather(-1, batch.teacher_ids[..., None]).squeeze(-1))
        got = trainer.teacher_payload(batch)
    want = torch.where(batch.take_pass2, logp[1], logp[0])
    # The loss reads teacher log-probs only on the tokens of active chunks (§5.5-5.7): compare there.
    tc = batch.teacher_chunk
    read = (tc >= 0) & batch.active.gather(1, tc.clamp_min(0)) & batch.teacher_attention
    assert read.any() and (batch.take_pass2 & read).any()
    torch.testing.assert_close(got[read].double(), want[read], rtol=1e-4, atol=1e-4)

    # §9.8: the CE runs over the chunk-expanded student mask, which is larger than the sampled one.
    assert torch.equal(batch.masked, stage["student_mask"])
    assert (stage["student_mask"] & ~stage["sampled_student_mask"]).any()
    with torch.no_grad():
        terms = trainer.student_loss(batch, got)
    want_ce = _reference_ce(_reference_student_logits(artifacts, batch), batch)
    assert terms["loss/ce"] == pytest.approx(want_ce, rel=1e-4)



def test_wedlm_teacher_input_uses_the_teachers_own_mask_id(artifacts, tmp_path):
    """§9.1, §2.2: in Pipeline B the student and WeDLM share a tokenizer but not the mask id (151669 vs 151665).
    The dataset's teacher tokenizer is the student's, so its mask id is the student's; the id written into the
    teacher's input must be the teacher's own (here 124 from its config.json, the student's being 127)."""
    own = tmp_path / "dense_own_mask"
    shutil.copytree(artifacts / "dense", own)
    config = json.loads((own / "config.json").read_text())
    config["mask_token_id"] = 124
    (own / "config.json").write_text(json.dumps(config))
    trainer = _trainer(artifacts, tmp_path, "b_kl", teacher_dir=own)
    assert trainer.meta["teacher"]["mask_id"] == td.STUDENT_IDS["student_mask"] != 124
    batch = _batch(trainer)
    got = trainer.teacher_payload(batch)
    reference = load_hf_reference(str(own))
    b, Lt = batch.teacher_ids.shape
    real = batch.teacher_attention.repeat(1, 2)
    allowed = bd3lm_allowed(Lt, BLOCK, x0_first=True)[None] & real[:, :, None] & real[:, None, :]
    xt = torch.where(batch.teacher_pass_masks[0], 124, batch.teacher_ids)
    with torch.no_grad():
        logits = reference(input_ids=torch.cat([batch.teacher_ids, xt], 1),
                           position_ids=torch.arange(Lt).repeat(2).expand(b, 2 * Lt),
                           attention_mask=_additive(allowed)[:, None]).logits[:, Lt:]
    rows = [(k, int(t)) for k in range(b) for s, t, v in zip(batch.pair_student[k], batch.pair_teacher[k],
                                                               batch.pair_valid[k]) if v and batch.masked[k, s]]
    want = torch.stack([logits[k, t, :SHARED] for k, t in rows])
    torch.testing.assert_close(got.double(), want.double(), rtol=1e-4, atol=1e-4)


def test_wedlm_mask_id_defaults_to_151665(tmp_path):
    """§2.2: WeDLM's mask is 151665; a WeDLM config.json without mask_token_id must not leave it to the dataset's
    (shared, student) tokenizer, whose mask is the student's 151669."""
    from tide_megatron.config import TeacherConfig
    from tide_megatron.training.models import _teacher_special_ids

    hf = {"model_type": "wedlm", "vocab_size": 151936, "pad_token_id": 151643, "eos_token_id": 151645}
    assert _teacher_special_ids(TeacherConfig(arch="wedlm", checkpoint=str(tmp_path)), hf)[0] == 151665
    assert _teacher_special_ids(TeacherConfig(arch="wedlm", checkpoint=str(tmp_path), mask_id=7), hf)[0] == 7
    assert _teacher_special_ids(TeacherConfig(arch="wedlm", checkpoint=str(tmp_path)), {**hf, "vocab_size": 128})[0] \
        is None  # a vocabulary without id 151665 (a tiny test model) keeps the dataset's id


@pytest.mark.parametrize("variant", ["b_tide_shared", "a_tide_shared"])
def test_micro_batch_without_masked_tokens_gives_exact_zero(artifacts, tmp_path, variant):
    """§9.10, §4.5: nothing masked (hence no distilled row, no active chunk, CompDemo's single-pass fallback):
    every term is exactly 0 and the backward leaves every gradient at 0."""
    trainer = _trainer(artifacts, tmp_path, variant)
    cfg = trainer.collator.cfg
    out = collate_samples([trainer.train_data[i] for i in range(2)], cfg)
    out.update(AlignmentStage(cfg)(out, torch.zeros_like(out["labels"], dtype=torch.bool)))
    out["t"] = torch.tensor([0.5, 0.7])
    batch = DistillBatch.from_stage(out)
    trainer.model.zero_grad_buffer()
    terms = trainer.student_loss(batch, trainer.teacher_payload(batch), backward_scale=1.0)
    assert all(v == 0.0 for k, v in terms.items() if k.startswith("loss/")), terms
    assert all(int(torch.count_nonzero(p.main_grad)) == 0 for p in trainer.model.parameters())

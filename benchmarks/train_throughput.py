"""Distillation step speed: our trainer step against the plain reference approach, measured side by side in one run.

Cases (fp32, CPU), at the issue's reference point by default: student Qwen3 hidden 256, 4 layers, 8/4 heads,
intermediate 768, V = 16,384, tied head; 4 sequences x 256 student tokens (64 prompt), block 32, T = 2.
  - tide_shared: TIDAL + CompDemo (taid_aligned), dense Qwen3-layout teacher (the WeDLM role) hidden 384,
                 6 layers, 8/4 heads, intermediate 1152, 256 teacher tokens;
  - tide_cross:  Reverse CALM (reverse_alm), LLaDA2 MoE teacher hidden 256, 4 layers, 8 experts top-2 + 1 shared,
                 moe_intermediate 256, first layer dense (768), V = 20,480, 384 teacher tokens.

Both sides load the same HF checkpoints, get identical noised micro-batches (our collator's), the same sizes and
thread count, and run interleaved (baseline, ours, baseline, ours, ...), so load on the machine hits both alike:
only the ratio measured in one run means anything. Both sides include the optimizer step.
  - baseline, the reference approach written plainly (spec §1.4-§1.5, §2.1-§2.2, §3-§5): transformers' own Qwen3
    as the student over [xt ; x0] with an explicit 4-D block-diffusion mask (SDPA); its logits over every row, the
    xt half sliced out (out[:, :L]); the CE and the TIDE term computed naively over all rows, then masked; the
    teacher without gradients over full sequences with full-vocabulary logits (transformers' Qwen3 over
    [x0 ; xt_p] once per CompDemo pass, its xt half sliced out, or `tide_megatron.fixtures.plain_llada2` over
    the whole teacher sequence), always fp32; torch AdamW (fused, HF Trainer's default on torch >= 2.8) with
    gradient clipping and a warmup + cosine schedule. ``--xt-logits-baseline`` gives it LM heads on the xt halves
    only (transformers' logits_to_keep): stricter than the reference approach.
  - ours: `DistillTrainer.train_step` (teacher engine payloads, compacted inputs, output layer + loss at the rows
    read, megatron DDP + distributed optimizer, LR schedule).
Before timing, both compute the loss of the first batch from the same weights; they must agree, or the script
fails (the comparison would not be like for like).

    python benchmarks/train_throughput.py [--rounds 4] [--steps 2] [--threads N] [--case tide_shared|tide_cross]
    python benchmarks/train_throughput.py --scaling            # step time vs student length and vocabulary
    python benchmarks/train_throughput.py --teacher-dtype bf16 # our teacher in bf16 (not like for like)
    python benchmarks/train_throughput.py --loss-memory        # loss-side peak memory at V = 151,936
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Optional

os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script from a checkout

import psutil  # noqa: E402
import torch  # noqa: E402
from transformers import Qwen3Config, Qwen3ForCausalLM, get_cosine_schedule_with_warmup  # noqa: E402

from tide_megatron.align.rows import masked_rows  # noqa: E402
from tide_megatron.config import config_from_dict  # noqa: E402
from tide_megatron.data.batch import DistillBatch  # noqa: E402
from tide_megatron.demo.pretrain_teacher import TinyLLaDA2Shape, write_random_llada2_hf  # noqa: E402
from tide_megatron.diffusion.masks import block_diffusion_mask  # noqa: E402
from tide_megatron.fixtures.plain_llada2 import load_plain_llada2  # noqa: E402
from tide_megatron.losses import LossInputs, ObjectiveConfig, build_objective  # noqa: E402
from tide_megatron.models.convert.reference import load_hf_reference  # noqa: E402
from tide_megatron.training.data import ListDataset, micro_batches  # noqa: E402
from tide_megatron.training.student_loss import chunked_loss_backward  # noqa: E402
from tide_megatron.training.trainer import DistillTrainer  # noqa: E402

GOAL = 2.0  # ours / baseline tokens per second, both cases (issue 12)
PHASES = ("teacher", "student_forward", "head_loss", "backward", "optimizer")
PHASE_TITLES = {"teacher": "teacher (no grad)", "student_forward": "student trunk fwd",
                "head_loss": "output layer+loss", "backward": "trunk backward", "optimizer": "optimizer step"}
LOSS_TOLERANCE = {"fp32": 2e-3, "bf16": 5e-2}  # relative, by our teacher's dtype (fp32 sums agree to ~1e-6)
SCALING = ((128, 16384), (256, 16384), (512, 16384), (256, 151936))  # (student length, student vocabulary)


@dataclass(frozen=True)
class Sizes:
    """One benchmark configuration (the issue's reference point by default)."""

    case: str = "tide_shared"
    batch: int = 4
    length: int = 256  # student tokens per sequence
    prompt: int = 64
    block: int = 32
    temperature: float = 2.0
    student_vocab: int = 16384
    student: dict = field(default_factory=lambda: dict(hidden=256, layers=4, heads=8, kv_heads=4, intermediate=768))
    dense_teacher: dict = field(default_factory=lambda: dict(hidden=384, layers=6, heads=8, kv_heads=4,
                                                             intermediate=1152))
    moe_teacher: dict = field(default_factory=lambda: dict(
        hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=4,
        head_dim=32, num_experts=8, num_experts_per_tok=2, num_shared_experts=1, n_group=1, topk_group=1,
        moe_intermediate_size=256, first_k_dense_replace=1))
    moe_vocab: int = 20480
    teacher_dtype: str = "fp32"  # our teacher's dtype; the baseline's teacher is always fp32
    xt_logits_only: bool = False  # baseline LM heads on the xt halves only (stricter than the reference approach)

    @property
    def teacher_tokens(self) -> int:
        return self.length if self.case == "tide_shared" else self.length * 3 // 2  # 2 student : 3 teacher tokens

    @property
    def teacher_vocab(self) -> int:
        return self.student_vocab if self.case == "tide_shared" else self.moe_vocab


# ------------------------------------------------------------------------------------------------------
# Checkpoints and data shared by both sides
# ------------------------------------------------------------------------------------------------------


def _write_qwen3(path: Path, spec: dict, vocab: int, seed: int, mask_id: int) -> None:
    torch.manual_seed(seed)
    cfg = Qwen3Config(vocab_size=vocab, hidden_size=spec["hidden"], intermediate_size=spec["intermediate"],
                      num_hidden_layers=spec["layers"], num_attention_heads=spec["heads"],
                      num_key_value_heads=spec["kv_heads"], head_dim=spec["hidden"] // spec["heads"],
                      max_position_embeddings=4096, tie_word_embeddings=True, rope_theta=1e6,
                      pad_token_id=vocab - 3, eos_token_id=vocab - 2)
    Qwen3ForCausalLM(cfg).save_pretrained(str(path), safe_serialization=True)
    raw = json.loads((path / "config.json").read_text())
    raw["mask_token_id"] = mask_id
    (path / "config.json").write_text(json.dumps(raw))


def _write_checkpoints(s: Sizes, work: Path) -> None:
    _write_qwen3(work / "student", s.student, s.student_vocab, seed=1, mask_id=s.student_vocab - 1)
    tv = s.teacher_vocab
    if s.case == "tide_shared":
        _write_qwen3(work / "teacher", s.dense_teacher, tv, seed=2, mask_id=tv - 1)
    else:
        write_random_llada2_hf(work / "teacher", TinyLLaDA2Shape(**s.moe_teacher), tv, mask_id=tv - 1,
                               pad_id=tv - 3, eos_id=tv - 2, seed=2)


def _samples(s: Sizes, n: int, seed: int = 0) -> list[dict]:
    """Fixed-length aligned samples: pairs over the response (shared tokenizer) or 2:3 chunks (cross)."""
    g = torch.Generator().manual_seed(seed)
    L, out = s.length, []
    for _ in range(n):
        s_ids = torch.randint(0, s.student_vocab - 8, (L,), generator=g)
        labels = s_ids.clone()
        labels[:s.prompt] = -100
        if s.case == "tide_shared":  # the teacher sees the same content (§2.4)
            t_ids = s_ids.clone()
            pairs = torch.stack([torch.arange(s.prompt, L), torch.arange(s.prompt, L)], 1)
            chunks = torch.zeros(0, 4, dtype=torch.int64)
        else:  # 2 student tokens <-> 3 teacher tokens per chunk (byte-aligned spans, §5.2)
            t_ids = torch.randint(0, s.teacher_vocab - 8, (s.teacher_tokens,), generator=g)
            c = torch.arange(L // 2)
            chunks = torch.stack([3 * c, 3 * c + 3, 2 * c, 2 * c + 2], 1)
            pairs = torch.zeros(0, 2, dtype=torch.int64)
        out.append(dict(student_ids=s_ids, student_labels=labels, teacher_ids=t_ids, chunks=chunks, pairs=pairs))
    return out


def _meta(s: Sizes) -> dict:
    v, tv = s.student_vocab, s.teacher_vocab
    shared = s.case == "tide_shared"
    return {"config": {"align": "pairs" if shared else "chunks", "student_max_len": s.length,
                       "student_tokenizer": "bench-student",
                       "teacher_tokenizer": "bench-student" if shared else "bench-teacher"},
            "student": {"vocab_size": v, "mask_id": v - 1, "eos_id": v - 2, "pad_id": v - 3},
            "teacher": {"vocab_size": tv, "mask_id": tv - 1, "eos_id": tv - 2, "pad_id": tv - 3}}


def _trainer_config(s: Sizes, work: Path, steps: int):
    return config_from_dict({
        "preset": "b_tide_shared" if s.case == "tide_shared" else "a_tide_cross", "output_dir": str(work / "run"),
        "student": {"checkpoint": str(work / "student"), "seq_length": s.length, "block_size": s.block},
        "teacher": {"checkpoint": str(work / "teacher"), "dtype": s.teacher_dtype},
        "data": {"micro_batch_size": s.batch, "num_workers": 0},
        "optim": {"train_steps": steps, "lr": 5e-5},
        "objective": {"kl_temperature": s.temperature, "alm_temperature": s.temperature,
                      "shared_vocab": s.student_vocab - 8},
        "precision": {"dtype": "fp32"},
        "checkpoint": {"resume": "none", "save_interval": 10**6, "save_at_end": False, "save_on_signal": False},
        "logging": {"tensorboard": False, "log_interval": 10**6}})


# ------------------------------------------------------------------------------------------------------
# The baseline: the reference approach, written plainly
# ------------------------------------------------------------------------------------------------------


def _additive(allowed: torch.Tensor) -> torch.Tensor:
    """bool "may attend" -> the additive fp32 mask transformers takes as a ready 4-D mask."""
    return torch.zeros(allowed.shape).masked_fill(~allowed, torch.finfo(torch.float32).min)


class PlainDistillStep:
    """One TIDE step the plain way: full-vocabulary logits of every row, naive losses, torch AdamW.

    The objective's settings come from the same config as our trainer's (mode, temperature, λ schedule, ω,
    shared vocabulary); every formula is written out here from the spec (§1.5, §3, §4, §5.6-5.7).
    """

    def __init__(self, cfg, s: Sizes, work: Path, total_steps: int):
        self.cfg, self.s, self.o = cfg, s, cfg.objective
        if s.case == "tide_shared" and (self.o.axis_mode, self.o.lambda_schedule) != ("both", "cosine"):
            raise ValueError("the plain TIDAL below writes out the preset's schedule: axis both, cosine λ")
        self.student = load_hf_reference(str(work / "student")).train()
        self.base, self.lm_head = self.student.get_decoder(), self.student.lm_head
        self.teacher = (load_hf_reference(str(work / "teacher")) if s.case == "tide_shared"
                        else load_plain_llada2(work / "teacher"))
        self.teacher.requires_grad_(False)
        self.params = [p for p in self.student.parameters() if p.requires_grad]
        oc = cfg.optim
        self.optimizer = torch.optim.AdamW(self.params, lr=oc.lr, betas=(oc.adam_beta1, oc.adam_beta2),
                                           eps=oc.adam_eps, weight_decay=oc.weight_decay, fused=True)
        self.scheduler = get_cosine_schedule_with_warmup(self.optimizer, math.ceil(oc.warmup_ratio * total_steps),
                                                         total_steps)
        self.total_steps, self.step_count = total_steps, 0
        self.student_mask = _additive(block_diffusion_mask(s.length, s.block, "xt_x0"))[None, None]
        self.student_pos = torch.arange(s.length).repeat(2)[None]
        self.teacher_mask_id = _meta(s)["teacher"]["mask_id"]

    @torch.no_grad()
    def teacher_outputs(self, batch: DistillBatch) -> torch.Tensor:
        """Shared: CompDemo-merged xt-half logits [b, L_t, V_t] (§2.2, §4). Cross: log p(clean token) [b, L_t]."""
        ids, att = batch.teacher_ids, batch.teacher_attention
        if self.s.case == "tide_cross":  # one bidirectional pass over the whole sequence (§2.1)
            xt = torch.where(batch.teacher_pass_masks[0], self.teacher_mask_id, ids)
            logits = self.teacher(xt, att.long()).float()
            return logits.log_softmax(-1).gather(-1, ids[..., None]).squeeze(-1)
        b, Lt = ids.shape
        both = att.repeat(1, 2)
        mask = _additive(block_diffusion_mask(Lt, self.s.block, "x0_xt")[None] & both[:, None, :] & both[:, :, None])
        pos = torch.arange(Lt).repeat(2)[None].expand(b, -1)
        keep = torch.arange(Lt, 2 * Lt) if self.s.xt_logits_only else 0  # 0: every row, transformers' default
        passes = []
        for p in range(batch.num_passes):  # one full [x0 ; xt_p] forward per CompDemo pass
            xt = torch.where(batch.teacher_pass_masks[p], self.teacher_mask_id, ids)
            out = self.teacher(input_ids=torch.cat([ids, xt], 1), position_ids=pos, attention_mask=mask[:, None],
                               logits_to_keep=keep)
            passes.append(out.logits[:, -Lt:].float())  # the xt half
        return passes[0] if len(passes) == 1 else torch.where(batch.take_pass2[..., None], passes[1], passes[0])

    def trunk(self, batch: DistillBatch) -> torch.Tensor:
        """Final hidden states of [xt ; x0] (of the xt half with ``xt_logits_only``)."""
        b, L = batch.x0.shape
        out = self.base(input_ids=torch.cat([batch.xt, batch.x0], 1), position_ids=self.student_pos.expand(b, -1),
                        attention_mask=self.student_mask.expand(b, 1, 2 * L, 2 * L))
        return out.last_hidden_state[:, :L] if self.s.xt_logits_only else out.last_hidden_state

    def loss(self, batch: DistillBatch, hidden: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        """CE (§1.5) + the mode's term over every row of the xt half, masked afterwards."""
        o, T, L = self.o, self.s.temperature, batch.x0.shape[1]
        logits = self.lm_head(hidden).float()[:, :L]  # student_logits = out[:, :L] (§1.4)
        tok_logp = logits.log_softmax(-1).gather(-1, batch.x0[..., None]).squeeze(-1)
        ce = -(tok_logp / (batch.t[:, None] + 1e-6) * batch.masked).sum() / batch.maskable.sum().clamp_min(1)
        t = batch.t.float()
        if self.s.case == "tide_shared":  # TIDAL at every aligned pair, averaged over K (§2.4, §3)
            ar = torch.arange(logits.shape[0])[:, None]
            zs = logits[ar, batch.pair_student][..., :o.shared_vocab] / T
            zt = teacher[ar, batch.pair_teacher][..., :o.shared_vocab] / T
            rho = self.step_count / max(self.total_steps, 1)
            lam_train = o.lambda_init + (o.lambda_max - o.lambda_init) * 0.5 * (1 - math.cos(math.pi * rho))
            lam = (lam_train * (1 - t))[:, None, None]
            omega = (torch.exp(-((t - 0.5) ** 2) / (2 * 0.15 ** 2)) if o.timestep_weight == "midrange"
                     else torch.ones_like(t))[:, None]
            r = torch.softmax((1 - lam) * zs + lam * zt, -1).detach()
            kl = (r * (r.clamp_min(1e-8).log() - zs.log_softmax(-1))).sum(-1)
            K = batch.pair_valid & batch.masked.gather(1, batch.pair_student)
            return ce + o.taid_weight * T * T * (omega * kl * K).sum() / K.sum().clamp_min(1)
        # Reverse CALM: chunk log-likelihoods through dense chunk matrices A_s, A_t (§5.3, §5.6-5.7)
        C = batch.active.shape[1]
        a_s = torch.nn.functional.one_hot(batch.student_chunk.clamp_min(0), C) * (batch.student_chunk >= 0)[..., None]
        a_t = torch.nn.functional.one_hot(batch.teacher_chunk.clamp_min(0), C) * (batch.teacher_chunk >= 0)[..., None]
        sc = torch.exp(torch.einsum("blc,bl->bc", a_s.float(), tok_logp) / T).clamp(1e-7, 1 - 1e-7)
        tc = torch.exp(torch.einsum("blc,bl->bc", a_t.float(), teacher) / T).clamp(1e-7, 1 - 1e-7)
        per_chunk = -(sc * tc.log() + (1 - sc) * (1 - tc).log())
        return ce + o.alm_weight * (per_chunk * batch.active).sum() / batch.active.sum().clamp_min(1)

    def optimizer_step(self) -> None:
        torch.nn.utils.clip_grad_norm_(self.params, self.cfg.optim.clip_grad)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step_count += 1

    def train_step(self, batch: DistillBatch) -> float:
        teacher = self.teacher_outputs(batch)
        loss = self.loss(batch, self.trunk(batch), teacher)
        loss.backward()
        self.optimizer_step()
        return float(loss.detach())

    def phases(self, batch: DistillBatch) -> dict[str, float]:
        """The same step timed per phase; the output layer's backward is counted with it, as in ours."""
        t = [time.perf_counter()]
        teacher = self.teacher_outputs(batch)
        t.append(time.perf_counter())
        hidden = self.trunk(batch)
        t.append(time.perf_counter())
        leaf = hidden.detach().requires_grad_()
        self.loss(batch, leaf, teacher).backward()
        t.append(time.perf_counter())
        hidden.backward(leaf.grad)
        t.append(time.perf_counter())
        self.optimizer_step()
        t.append(time.perf_counter())
        return dict(zip(PHASES, (b - a for a, b in zip(t, t[1:]))))


# ------------------------------------------------------------------------------------------------------
# Ours: the real trainer step, and its phases
# ------------------------------------------------------------------------------------------------------


def our_phases(trainer: DistillTrainer, batch: DistillBatch) -> dict[str, float]:
    """One `DistillTrainer.train_step` with timestamps at its phase boundaries (wrappers and module hooks only)."""
    marks: dict[str, float] = {}
    module = trainer.model.module
    teacher_payload, student_loss = trainer.teacher_payload, trainer.student_loss

    def timed_teacher(b):
        out = teacher_payload(b)
        marks["teacher_end"] = time.perf_counter()
        return out

    def timed_student(*args, **kwargs):
        out = student_loss(*args, **kwargs)
        marks["student_end"] = time.perf_counter()
        return out

    hooks = [module.register_forward_hook(lambda *_: marks.__setitem__("forward_end", time.perf_counter())),
             module.register_full_backward_pre_hook(
                 lambda *_: marks.__setitem__("backward_start", time.perf_counter()))]
    trainer.teacher_payload, trainer.student_loss = timed_teacher, timed_student
    try:
        start = time.perf_counter()
        trainer.train_step([batch])
        end = time.perf_counter()
    finally:
        del trainer.teacher_payload, trainer.student_loss  # the class's methods again
        for h in hooks:
            h.remove()
    return {"teacher": marks["teacher_end"] - start, "student_forward": marks["forward_end"] - marks["teacher_end"],
            "head_loss": marks["backward_start"] - marks["forward_end"],
            "backward": marks["student_end"] - marks["backward_start"], "optimizer": end - marks["student_end"]}


# ------------------------------------------------------------------------------------------------------
# One configuration, in its own process
# ------------------------------------------------------------------------------------------------------


def _fastest_step(fn: Callable, batches: list, steps: int) -> float:
    """The fastest of ``steps`` steps: load on a shared machine only ever adds time (as ``timeit`` reports)."""
    times = []
    for i in range(steps):
        t0 = time.perf_counter()
        fn(batches[i % len(batches)])
        times.append(time.perf_counter() - t0)
    return min(times)


def run_config(s: Sizes, rounds: int, steps: int, threads: int, phases: bool) -> dict:
    """Build both sides on the same checkpoints and batches, check their losses agree, time them interleaved."""
    torch.set_num_threads(threads)
    work = Path(tempfile.mkdtemp(prefix="tide-bench-"))
    _write_checkpoints(s, work)
    n_batches = 4
    total_steps = 2 * (rounds * steps + 2 + int(phases)) + 1
    cfg = _trainer_config(s, work, total_steps)
    data = ListDataset(_samples(s, s.batch * n_batches), _meta(s))
    trainer = DistillTrainer(cfg, data, stream=open(os.devnull, "w"))
    batches = list(micro_batches(data, trainer.batches, trainer.collator, 0, n_batches))
    baseline = PlainDistillStep(cfg, s, work, total_steps)

    # Same weights, same batch: the two losses must agree before anything is timed.
    with torch.no_grad():
        first = batches[0]
        ref_loss = float(baseline.loss(first, baseline.trunk(first), baseline.teacher_outputs(first)))
    our_loss = trainer.student_loss(first, trainer.teacher_payload(first))["loss/total"]
    if abs(ref_loss - our_loss) > LOSS_TOLERANCE[s.teacher_dtype] * max(1.0, abs(ref_loss)):
        raise RuntimeError(f"{s.case}: baseline loss {ref_loss:.6f} != ours {our_loss:.6f} on the same batch and "
                           f"weights; the two sides do not compute the same step")

    ours = lambda b: trainer.train_step([b])  # noqa: E731
    for fn in (baseline.train_step, ours):  # warm-up: allocator, first-call paths
        fn(first)
    rows = []
    for _ in range(rounds):
        load = os.getloadavg()[0]
        base_s = _fastest_step(baseline.train_step, batches, steps)
        ours_s = _fastest_step(ours, batches, steps)
        rows.append({"baseline_s": base_s, "ours_s": ours_s, "load": load})
    result = {"sizes": s.__dict__ | {"teacher_tokens": s.teacher_tokens}, "rounds": rows,
              "tokens": s.batch * s.length, "ref_loss": ref_loss, "our_loss": our_loss,
              "masked_rows": sum(int(b.masked.sum()) for b in batches) / sum(int(b.x0.numel()) for b in batches),
              "params_m": {"student": sum(p.numel() for p in trainer.model.parameters()) / 1e6,
                           "teacher": sum(p.numel() for p in trainer.teacher.engine.model.parameters()) / 1e6}}
    if phases:  # each phase's fastest of two steps per side
        runs = [(baseline.phases(b), our_phases(trainer, b)) for b in batches[1:3]]
        result["phases"] = {side: {ph: min(run[i][ph] for run in runs) for ph in PHASES}
                            for i, side in enumerate(("baseline", "ours"))}
    trainer.close()
    return result


# ------------------------------------------------------------------------------------------------------
# Loss-side peak memory (V = 151,936): the chunked output layer + loss vs materialised logits
# ------------------------------------------------------------------------------------------------------


class _RssPeak:
    """Samples this process's resident set size every millisecond (CPU has no allocator statistics)."""

    def __init__(self) -> None:
        self.proc, self.peak, self._stop = psutil.Process(), 0, threading.Event()

    def __enter__(self):
        self.base = self.peak = self.proc.memory_info().rss
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.001)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)


def run_loss_memory(method: str) -> dict:
    """CE + TIDAL over 512 student rows at V = 151,936 from hidden-1024 states: ``full`` materialises the
    [2, 256, V] logits, ``chunked`` is the trainer's output layer + loss. Peak RSS growth over the logit size."""
    torch.manual_seed(0)
    b, Lr, V, h = 2, 256, 151936, 1024
    x0 = torch.randint(0, V, (b, Lr))
    masked = torch.rand(b, Lr) < 0.5
    logits_bytes = b * Lr * V * 4
    objective = build_objective("taid", ObjectiveConfig(kl_temperature=2.0, shared_vocab=151646))
    inputs = LossInputs(student_logits=None, x0=x0, masked=masked, maskable=torch.ones_like(masked),
                        t=torch.rand(b), rows=masked_rows(masked),
                        teacher_rows=torch.randn(int(masked.sum()), 151646))
    weight = (torch.randn(V, h) * 0.02).requires_grad_()
    weight.grad = torch.zeros_like(weight)
    trunk = torch.randn(b, Lr, h, requires_grad=True)
    time.sleep(0.05)
    with _RssPeak() as mem:
        t0 = time.perf_counter()
        hidden = trunk * 1.0
        if method == "full":
            logits = hidden @ weight.t()
            objective(replace(inputs, student_logits=logits), step=10, total_steps=100).total.backward()
            del logits
        else:
            chunked_loss_backward(hidden, weight, inputs, objective, 10, 100, 1, {"taid": 1.0})
        elapsed = time.perf_counter() - t0
    return {"peak_over_logits": (mem.peak - mem.base) / logits_bytes, "logits_gib": logits_bytes / 2**30,
            "loss_s": elapsed}


# ------------------------------------------------------------------------------------------------------
# Driver
# ------------------------------------------------------------------------------------------------------


def _child(args: list[str], env_extra: Optional[dict] = None) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           **(env_extra or {})}
    proc = subprocess.run([sys.executable, __file__, *args], env=env, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"benchmark child {args} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return json.loads(lines[-1])


def _config_args(case: str, length: int, vocab: int, a: argparse.Namespace, phases: bool) -> list[str]:
    return ["--child", case, "--length", str(length), "--vocab", str(vocab), "--teacher-dtype", a.teacher_dtype,
            "--rounds", str(a.rounds), "--steps", str(a.steps), "--threads", str(a.threads)] + \
        ([] if phases else ["--no-phases"]) + (["--xt-logits-baseline"] if a.xt_logits_baseline else [])


def _ratios(r: dict) -> list[float]:
    return [row["baseline_s"] / row["ours_s"] for row in r["rounds"]]


def _report_case(name: str, r: dict) -> float:
    tok, ratios = r["tokens"], _ratios(r)
    print(f"\n{name}: student {r['params_m']['student']:.1f} M params, teacher {r['params_m']['teacher']:.1f} M "
          f"(ours {r['sizes']['teacher_dtype']}, baseline fp32), {r['sizes']['teacher_tokens']} teacher tokens; "
          f"{100 * r['masked_rows']:.0f}% of student rows masked")
    print(f"  first-batch loss from the same weights: baseline {r['ref_loss']:.6f}, ours {r['our_loss']:.6f}")
    print(f"  {'round':>5} {'load':>5} {'baseline tok/s':>15} {'ours tok/s':>11} {'ratio':>7}")
    for i, (row, q) in enumerate(zip(r["rounds"], ratios)):
        print(f"  {i + 1:>5} {row['load']:>5.1f} {tok / row['baseline_s']:>15.0f} {tok / row['ours_s']:>11.0f} "
              f"{q:>6.2f}x")
    med = statistics.median(ratios)
    print(f"  median ratio {med:.2f}x (goal >= {GOAL:.1f}x); median tok/s: baseline "
          f"{tok / statistics.median(x['baseline_s'] for x in r['rounds']):.0f}, ours "
          f"{tok / statistics.median(x['ours_s'] for x in r['rounds']):.0f}")
    if "phases" in r:
        totals = {side: sum(p.values()) for side, p in r["phases"].items()}
        print(f"  one step by phase, seconds (share; fastest of 2):  baseline              ours")
        for ph in PHASES:
            b, o = r["phases"]["baseline"][ph], r["phases"]["ours"][ph]
            print(f"    {PHASE_TITLES[ph]:<34} {b:>8.3f} ({100 * b / totals['baseline']:>3.0f}%)   "
                  f"{o:>8.3f} ({100 * o / totals['ours']:>3.0f}%)")
        print(f"    {'total':<34} {totals['baseline']:>8.3f}          {totals['ours']:>8.3f}")
    return med


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--case", choices=("tide_shared", "tide_cross"), default=None, help="one case only")
    ap.add_argument("--rounds", type=int, default=4, help="interleaved rounds (baseline, ours) per case")
    ap.add_argument("--steps", type=int, default=3, help="timed steps per side and round (the round's fastest)")
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                    help="torch threads, the same for both sides (default: the CPUs this process may use)")
    ap.add_argument("--teacher-dtype", choices=("fp32", "bf16"), default="fp32",
                    help="our teacher's dtype; the baseline's stays fp32, so only fp32 is like for like")
    ap.add_argument("--xt-logits-baseline", action="store_true",
                    help="baseline LM heads on the xt halves only (stricter than the reference approach, which "
                         "computes the logits of every row and slices the xt half, spec §1.4, §2.2)")
    ap.add_argument("--no-phases", dest="phases", action="store_false", help="skip the per-phase breakdown")
    ap.add_argument("--scaling", action="store_true",
                    help="step time vs student length (128, 256, 512) and vocabulary (16,384, 151,936)")
    ap.add_argument("--loss-memory", action="store_true", help="loss-side peak memory at V = 151,936")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--length", type=int, default=256, help=argparse.SUPPRESS)
    ap.add_argument("--vocab", type=int, default=16384, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        if a.child.startswith("loss_memory_"):
            print(json.dumps(run_loss_memory(a.child.rsplit("_", 1)[1])))
        else:
            s = Sizes(case=a.child, length=a.length, student_vocab=a.vocab, teacher_dtype=a.teacher_dtype,
                      xt_logits_only=a.xt_logits_baseline)
            print(json.dumps(run_config(s, a.rounds, a.steps, a.threads, a.phases)))
        return 0
    if a.rounds < 1 or a.steps < 1 or a.threads < 1:
        ap.error("--rounds, --steps and --threads must be >= 1")

    print(f"TIDE distillation step, fp32 student, CPU: {a.threads} torch threads for both sides, {a.rounds} "
          f"interleaved rounds x {a.steps} steps per side (a round's figure is its fastest step); load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs at the start")
    print("both sides: teacher forward (no grad), student forward + backward, optimizer step (baseline: torch AdamW "
          "fused + clipping; ours: megatron DDP + distributed optimizer, fused torch AdamW + clipping)")
    print("baseline LM heads: " + ("xt halves only (--xt-logits-baseline)" if a.xt_logits_baseline else
                                   "every row, xt half sliced out, as the reference approach (§1.4, §2.2)"))
    if a.loss_memory:
        mm = {"MALLOC_MMAP_THRESHOLD_": "65536"}  # freed tensors go back to the OS, so RSS tracks live memory
        full, ours = _child(["--child", "loss_memory_full"], mm), _child(["--child", "loss_memory_chunked"], mm)
        print(f"loss side (CE + TIDAL, 512 rows, V=151,936, hidden 1024, logits {full['logits_gib']:.2f} GiB fp32), "
              f"peak memory growth in units of the logit tensor: full logits {full['peak_over_logits']:.2f}x in "
              f"{full['loss_s']:.2f} s; chunked (trainer) {ours['peak_over_logits']:.2f}x in {ours['loss_s']:.2f} s")
        return 0
    cases = [a.case] if a.case else ["tide_shared", "tide_cross"]
    if a.scaling:
        print("\nscaling: step seconds per side (median over the rounds of each round's fastest step), "
              "ratio = baseline / ours")
        print(f"{'case':<12} {'L':>5} {'V':>7} {'baseline s':>11} {'ours s':>8} {'ours/base':>10} {'ratio':>7} "
              f"{'load':>5}")
        for case in cases:
            for length, vocab in SCALING:
                r = _child(_config_args(case, length, vocab, a, phases=False))
                bs = statistics.median(x["baseline_s"] for x in r["rounds"])
                us = statistics.median(x["ours_s"] for x in r["rounds"])
                print(f"{case:<12} {length:>5} {vocab:>7} {bs:>11.2f} {us:>8.2f} {us / bs:>10.2f} "
                      f"{statistics.median(_ratios(r)):>6.2f}x {statistics.mean(x['load'] for x in r['rounds']):>5.1f}")
        return 0
    meds = {case: _report_case(case, _child(_config_args(case, 256, 16384, a, a.phases))) for case in cases}
    short = [f"{c} ({m:.2f}x)" for c, m in meds.items() if m < GOAL]
    print(f"\ngoal (median ratio >= {GOAL:.1f}x) " + (f"NOT met by {', '.join(short)}" if short else "met") + "; "
          f"{', '.join(f'{c} {m:.2f}x' for c, m in meds.items())}; load average now {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

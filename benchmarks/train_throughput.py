"""Distillation step speed: our trainer step against the plain reference approach, measured side by side in one run.

Cases (fp32, CPU), at the issue's reference point by default: student Qwen3 hidden 256, 4 layers, 8/4 heads,
intermediate 768, V = 16,384, tied head; 4 sequences x 256 student tokens (64 prompt), block 32, T = 2.
  - tide_shared: TIDAL + CompDemo (taid_aligned), dense Qwen3-layout teacher (WeDLM role) hidden 384, 6 layers,
                 8/4 heads, intermediate 1152, 256 teacher tokens;
  - tide_cross:  Reverse CALM (reverse_alm), LLaDA2 MoE teacher hidden 256, 4 layers, 8 experts top-2 + 1 shared,
                 moe_intermediate 256, first layer dense (768), V = 20,480, 384 teacher tokens.

Both sides load the same HF checkpoints, get identical noised micro-batches (our collator's), the same sizes and
thread count, and run interleaved (baseline, ours, baseline, ours, ...), so load on the machine hits both alike;
only the ratio measured in one run means anything. Both sides include the optimizer step.
  - baseline, the reference approach written plainly: transformers' own Qwen3 as the student over [xt ; x0] with
    an explicit 4-D block-diffusion mask (SDPA), the LM head on the xt half (full vocabulary, every row), the CE
    and the TIDE term computed naively over all rows and then masked; the teacher run without gradients over full
    sequences with full-vocabulary logits (transformers' Qwen3 over [x0 ; xt_p] once per CompDemo pass, or the
    plain LLaDA2 of `tide_megatron.fixtures.plain_llada2` over the whole teacher sequence); torch AdamW (fused,
    HF Trainer's default) with gradient clipping and a warmup + cosine schedule.
  - ours: `DistillTrainer.train_step` (teacher engine payloads, compacted inputs, chunked output layer + loss,
    megatron DDP + distributed optimizer, LR schedule).
Before timing, both compute the loss of the first batch from the same weights; they must agree (else the
comparison would not be like for like and the script fails).

    python benchmarks/train_throughput.py [--rounds 4] [--steps 2] [--threads N] [--case tide_shared|tide_cross]
    python benchmarks/train_throughput.py --scaling          # step time vs student length and vocabulary
    python benchmarks/train_throughput.py --teacher-dtype bf16   # our teacher in bf16 (reported separately)
    python benchmarks/train_throughput.py --loss-memory      # loss-side peak memory at V = 151,936
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
sys.path.insert(0, str(REPO))

GOAL = 2.0  # ours / baseline tokens per second, both cases (issue 12)
PHASES = ("teacher", "student_forward", "head_loss", "backward", "optimizer")
PHASE_TITLES = {"teacher": "teacher", "student_forward": "student trunk fwd", "head_loss": "output layer+loss",
                "backward": "trunk backward", "optimizer": "optimizer"}
LOSS_TOLERANCE = 2e-3  # relative; fp32 sums in a different order agree to ~1e-5


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
    teacher_dtype: str = "fp32"

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
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

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


def _samples(s: Sizes, n: int, seed: int = 0) -> list[dict]:
    """Fixed-length aligned samples: pairs over the response (shared tokenizer) or 2:3 chunks (cross)."""
    import torch

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


def _write_checkpoints(s: Sizes, work: Path) -> None:
    _write_qwen3(work / "student", s.student, s.student_vocab, seed=1, mask_id=s.student_vocab - 1)
    tv = s.teacher_vocab
    if s.case == "tide_shared":
        _write_qwen3(work / "teacher", s.dense_teacher, tv, seed=2, mask_id=tv - 1)
    else:
        from tide_megatron.demo.pretrain_teacher import TinyLLaDA2Shape, write_random_llada2_hf

        write_random_llada2_hf(work / "teacher", TinyLLaDA2Shape(**s.moe_teacher), tv, mask_id=tv - 1,
                               pad_id=tv - 3, eos_id=tv - 2, seed=2)


def _trainer_config(s: Sizes, work: Path, steps: int):
    from tide_megatron.config import config_from_dict

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


def _additive(allowed, dtype):
    import torch

    return torch.zeros(allowed.shape, dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min)


class PlainDistillStep:
    """One TIDE step the plain way: full teacher logits, full student logits over the xt half, naive losses, AdamW.

    The objective is read from the same config as our trainer's (mode, temperatures, λ schedule, ω, shared
    vocabulary), but every formula is written out here from the spec (§1.5, §3, §4, §5.6-5.7).
    """

    def __init__(self, cfg, s: Sizes, work: Path, total_steps: int):
        import torch
        from transformers import get_cosine_schedule_with_warmup

        from tide_megatron.fixtures.plain_llada2 import load_plain_llada2
        from tide_megatron.models.convert.reference import load_hf_reference

        self.cfg, self.s = cfg, s
        self.o = cfg.objective
        self.student = load_hf_reference(str(work / "student")).train()
        self.base = self.student.get_decoder()
        self.lm_head = self.student.lm_head
        teacher_dtype = torch.bfloat16 if s.teacher_dtype == "bf16" else torch.float32
        if s.case == "tide_shared":
            self.teacher = load_hf_reference(str(work / "teacher")).to(teacher_dtype).eval()
        else:
            self.teacher = load_plain_llada2(work / "teacher", teacher_dtype)
        self.teacher.requires_grad_(False)
        self.params = [p for p in self.student.parameters() if p.requires_grad]
        oc = cfg.optim
        self.optimizer = torch.optim.AdamW(self.params, lr=oc.lr, betas=(oc.adam_beta1, oc.adam_beta2),
                                           eps=oc.adam_eps, weight_decay=oc.weight_decay, fused=True)
        self.scheduler = get_cosine_schedule_with_warmup(self.optimizer, math.ceil(oc.warmup_ratio * total_steps),
                                                         total_steps)
        self.total_steps, self.step_count = total_steps, 0
        L, B = s.length, s.block
        from tide_megatron.diffusion.masks import block_diffusion_mask

        self.student_mask = _additive(block_diffusion_mask(L, B, "xt_x0"), torch.float32)[None, None]
        self.student_pos = torch.arange(L).repeat(2)[None]
        self.meta = _meta(s)

    # -- teacher ----------------------------------------------------------------------------------
    def teacher_logits(self, batch):
        """Shared: merged xt-half logits [b, L_t, V_t] (§2.2, §4). Cross: log p(clean teacher token) [b, L_t]."""
        import torch

        t_mask = self.meta["teacher"]["mask_id"]
        with torch.no_grad():
            if self.s.case == "tide_shared":
                from tide_megatron.diffusion.masks import block_diffusion_mask

                ids, att = batch.teacher_ids, batch.teacher_attention
                b, Lt = ids.shape
                allowed = block_diffusion_mask(Lt, self.s.block, "x0_xt")[None] & att.repeat(1, 2)[:, None, :] \
                    & att.repeat(1, 2)[:, :, None]
                mask = _additive(allowed, next(self.teacher.parameters()).dtype)[:, None]
                pos = torch.arange(Lt).repeat(2)[None].expand(b, -1)
                passes = []
                for p in range(batch.num_passes):  # one full forward per CompDemo pass
                    xt = torch.where(batch.teacher_pass_masks[p], t_mask, ids)
                    out = self.teacher(input_ids=torch.cat([ids, xt], 1), position_ids=pos, attention_mask=mask,
                                       logits_to_keep=torch.arange(Lt, 2 * Lt))
                    passes.append(out.logits.float())
                if len(passes) == 1:
                    return passes[0]
                return torch.where(batch.take_pass2[..., None], passes[1], passes[0])
            xt = torch.where(batch.teacher_pass_masks[0], t_mask, batch.teacher_ids)
            logits = self.teacher(xt, batch.teacher_attention.long()).float()
            return logits.log_softmax(-1).gather(-1, batch.teacher_ids[..., None]).squeeze(-1)

    # -- student -----------------------------------------------------------------------------------
    def trunk(self, batch):
        import torch

        b, L = batch.x0.shape
        out = self.base(input_ids=torch.cat([batch.xt, batch.x0], 1), position_ids=self.student_pos.expand(b, -1),
                        attention_mask=self.student_mask.expand(b, 1, 2 * L, 2 * L))
        return out.last_hidden_state[:, :L]

    def loss(self, batch, hidden, teacher):
        """CE (§1.5) + the mode's term, every row computed, then masked."""
        import torch

        o, T = self.o, self.s.temperature
        logits = self.lm_head(hidden).float()  # [b, L, V]
        logp = logits.log_softmax(-1)
        tok_logp = logp.gather(-1, batch.x0[..., None]).squeeze(-1)
        w = 1.0 / (batch.t.float() + 1e-6)
        ce = -(tok_logp * w[:, None] * batch.masked).sum() / batch.maskable.sum().clamp_min(1)
        if self.s.case == "tide_shared":  # TIDAL over every aligned pair, masked to K (§2.4, §3)
            vs = o.shared_vocab
            b = logits.shape[0]
            ar = torch.arange(b)[:, None]
            zs = logits[ar, batch.pair_student][..., :vs] / T
            zt = teacher[ar, batch.pair_teacher][..., :vs] / T
            rho = self.step_count / max(self.total_steps, 1)
            lam_train = o.lambda_init + (o.lambda_max - o.lambda_init) * 0.5 * (1 - math.cos(math.pi * rho))
            t = batch.t.float()
            lam = (lam_train * (1 - t))[:, None, None]
            omega = torch.exp(-((t - 0.5) ** 2) / (2 * 0.15 ** 2))[:, None]
            r = torch.softmax((1 - lam) * zs + lam * zt, -1).detach()
            kl = (r * (r.clamp_min(1e-8).log() - zs.log_softmax(-1))).sum(-1)
            K = batch.pair_valid & batch.masked.gather(1, batch.pair_student)
            term = T * T * (omega * kl * K).sum() / K.sum().clamp_min(1)
            return ce + o.taid_weight * term
        # Reverse CALM over chunk log-likelihoods from dense chunk matrices (§5.6-5.7)
        C = batch.active.shape[1]
        a_s = torch.nn.functional.one_hot(batch.student_chunk.clamp_min(0), C).float() * (batch.student_chunk >= 0)[..., None]
        a_t = torch.nn.functional.one_hot(batch.teacher_chunk.clamp_min(0), C).float() * (batch.teacher_chunk >= 0)[..., None]
        s_ll = torch.einsum("blc,bl->bc", a_s, tok_logp)
        t_ll = torch.einsum("blc,bl->bc", a_t, teacher)
        sc = torch.exp(s_ll / T).clamp(1e-7, 1 - 1e-7)
        tc = torch.exp(t_ll / T).clamp(1e-7, 1 - 1e-7)
        per_chunk = -(sc * tc.log() + (1 - sc) * (1 - tc).log())
        term = (per_chunk * batch.active).sum() / batch.active.sum().clamp_min(1)
        return ce + o.alm_weight * term

    def optimizer_step(self) -> None:
        import torch

        torch.nn.utils.clip_grad_norm_(self.params, self.cfg.optim.clip_grad)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step_count += 1

    def train_step(self, batch) -> float:
        teacher = self.teacher_logits(batch)
        loss = self.loss(batch, self.trunk(batch), teacher)
        loss.backward()
        self.optimizer_step()
        return float(loss.detach())

    def phases(self, batch) -> dict[str, float]:
        """The same step, timed per phase (the output layer's backward counted with it, as in ours)."""
        t = [time.perf_counter()]
        teacher = self.teacher_logits(batch)
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


def our_phases(trainer, batch) -> dict[str, float]:
    """`DistillTrainer.train_step` with timestamps at its phase boundaries (hooks only, the step itself unchanged)."""
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
        del trainer.teacher_payload, trainer.student_loss
        for h in hooks:
            h.remove()
    return {"teacher": marks["teacher_end"] - start, "student_forward": marks["forward_end"] - marks["teacher_end"],
            "head_loss": marks["backward_start"] - marks["forward_end"],
            "backward": marks["student_end"] - marks["backward_start"], "optimizer": end - marks["student_end"]}


# ------------------------------------------------------------------------------------------------------
# One configuration, in its own process
# ------------------------------------------------------------------------------------------------------


def _median_step(fn: Callable, batches: list, steps: int) -> float:
    times = []
    for i in range(steps):
        t0 = time.perf_counter()
        fn(batches[i % len(batches)])
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def run_config(s: Sizes, rounds: int, steps: int, threads: int, phases: bool) -> dict:
    """Build both sides on the same checkpoints and batches, check their losses agree, time them interleaved."""
    import torch

    from tide_megatron.training.data import ListDataset, micro_batches
    from tide_megatron.training.trainer import DistillTrainer

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
        ref_loss = float(baseline.loss(batches[0], baseline.trunk(batches[0]), baseline.teacher_logits(batches[0])))
    our_loss = trainer.student_loss(batches[0], trainer.teacher_payload(batches[0]))["loss/total"]
    if abs(ref_loss - our_loss) > LOSS_TOLERANCE * max(1.0, abs(ref_loss)):
        raise RuntimeError(f"{s.case}: baseline loss {ref_loss:.6f} != ours {our_loss:.6f} on the same batch and "
                           f"weights; the two sides do not compute the same step")
    masked_rows = sum(int(b.masked.sum()) for b in batches) / sum(int(b.x0.numel()) for b in batches)

    ours = lambda b: trainer.train_step([b])  # noqa: E731
    for fn in (baseline.train_step, ours):  # warm-up: allocator, first-call paths
        fn(batches[0])
    rows = []
    for _ in range(rounds):
        load = os.getloadavg()[0]
        base_s = _median_step(baseline.train_step, batches, steps)
        ours_s = _median_step(ours, batches, steps)
        rows.append({"baseline_s": base_s, "ours_s": ours_s, "load": load})
    result = {"sizes": s.__dict__ | {"teacher_tokens": s.teacher_tokens}, "rounds": rows,
              "tokens": s.batch * s.length, "ref_loss": ref_loss, "our_loss": our_loss, "masked_rows": masked_rows,
              "threads": torch.get_num_threads(),
              "params_m": {"student": sum(p.numel() for p in trainer.model.parameters()) / 1e6,
                           "teacher": sum(p.numel() for p in trainer.teacher.engine.model.parameters()) / 1e6}}
    if phases:
        result["phases"] = {"baseline": baseline.phases(batches[1]), "ours": our_phases(trainer, batches[1])}
    trainer.close()
    return result


# ------------------------------------------------------------------------------------------------------
# Loss-side peak memory (V = 151,936): chunked output layer + loss vs materialised logits
# ------------------------------------------------------------------------------------------------------


class _RssPeak:
    """Samples this process's resident set size every millisecond (CPU has no allocator statistics)."""

    def __init__(self) -> None:
        import psutil

        self.proc, self.peak, self._stop = psutil.Process(), 0, threading.Event()

    def __enter__(self):
        self.base = self.proc.memory_info().rss
        self.peak = self.base
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
    import torch

    from tide_megatron.align.rows import masked_rows
    from tide_megatron.losses import LossInputs, ObjectiveConfig, build_objective
    from tide_megatron.training.student_loss import chunked_loss_backward

    torch.manual_seed(0)
    b, Lr, V, h = 2, 256, 151936, 1024
    x0 = torch.randint(0, V, (b, Lr))
    masked = torch.rand(b, Lr) < 0.5
    t = torch.rand(b)
    logits_bytes = b * Lr * V * 4
    objective = build_objective("taid", ObjectiveConfig(kl_temperature=2.0, shared_vocab=151646))
    inputs = LossInputs(student_logits=None, x0=x0, masked=masked, maskable=torch.ones_like(masked), t=t,
                        rows=masked_rows(masked), teacher_rows=torch.randn(int(masked.sum()), 151646))
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


def _config_args(case: str, length: int, vocab: int, teacher_dtype: str, a) -> list[str]:
    return ["--child", case, "--length", str(length), "--vocab", str(vocab), "--teacher-dtype", teacher_dtype,
            "--rounds", str(a.rounds), "--steps", str(a.steps), "--threads", str(a.threads)] + \
        ([] if a.phases else ["--no-phases"])


def _ratios(r: dict) -> list[float]:
    return [row["baseline_s"] / row["ours_s"] for row in r["rounds"]]


def _report_case(name: str, r: dict) -> float:
    tok = r["tokens"]
    ratios = _ratios(r)
    print(f"\n{name}: student {r['params_m']['student']:.1f} M params, teacher {r['params_m']['teacher']:.1f} M, "
          f"{r['sizes']['teacher_tokens']} teacher tokens, teacher {r['sizes']['teacher_dtype']}; "
          f"{100 * r['masked_rows']:.0f}% of student rows masked")
    print(f"  first-batch loss, same weights: baseline {r['ref_loss']:.6f}, ours {r['our_loss']:.6f}")
    print(f"  {'round':>5} {'load':>5} {'baseline tok/s':>15} {'ours tok/s':>11} {'ratio':>7}")
    for i, (row, q) in enumerate(zip(r["rounds"], ratios)):
        print(f"  {i + 1:>5} {row['load']:>5.1f} {tok / row['baseline_s']:>15.0f} {tok / row['ours_s']:>11.0f} "
              f"{q:>6.2f}x")
    med = statistics.median(ratios)
    print(f"  median ratio {med:.2f}x (goal >= {GOAL:.1f}x): "
          f"baseline {tok / statistics.median(x['baseline_s'] for x in r['rounds']):.0f} tok/s, "
          f"ours {tok / statistics.median(x['ours_s'] for x in r['rounds']):.0f} tok/s")
    if "phases" in r:
        print(f"  phases of one step, seconds (share):")
        totals = {side: sum(p.values()) for side, p in r["phases"].items()}
        print(f"    {'':<18} {'baseline':>16} {'ours':>16}")
        for ph in PHASES:
            b, o = r["phases"]["baseline"][ph], r["phases"]["ours"][ph]
            print(f"    {PHASE_TITLES[ph]:<18} {b:>8.3f} ({100 * b / totals['baseline']:>3.0f}%) "
                  f"{o:>8.3f} ({100 * o / totals['ours']:>3.0f}%)")
        print(f"    {'total':<18} {totals['baseline']:>8.3f}        {totals['ours']:>8.3f}")
    return med


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--case", choices=("tide_shared", "tide_cross"), default=None, help="one case only")
    ap.add_argument("--rounds", type=int, default=4, help="interleaved rounds (baseline, ours) per case")
    ap.add_argument("--steps", type=int, default=2, help="timed steps per side and round (the round's median)")
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                    help="torch threads, the same for both sides (default: the CPUs this process may use)")
    ap.add_argument("--teacher-dtype", choices=("fp32", "bf16"), default="fp32",
                    help="both sides' teacher dtype (fp32 is the like-for-like figure)")
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
            s = Sizes(case=a.child, length=a.length, student_vocab=a.vocab, teacher_dtype=a.teacher_dtype)
            print(json.dumps(run_config(s, a.rounds, a.steps, a.threads, a.phases)))
        return 0
    if a.rounds < 1 or a.steps < 1 or a.threads < 1:
        ap.error("--rounds, --steps and --threads must be >= 1")

    print(f"TIDE distillation step, fp32 student, CPU, {a.threads} threads for both sides; {a.rounds} interleaved "
          f"rounds x {a.steps} steps each side (round figure = median step); load average at start "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print("both sides include the teacher, the student forward/backward and the optimizer step "
          "(baseline: torch AdamW fused + clipping; ours: megatron DDP + distributed optimizer)")
    if a.loss_memory:
        mm = {"MALLOC_MMAP_THRESHOLD_": "65536"}  # freed tensors go back to the OS, so RSS tracks live memory
        full, ours = _child(["--child", "loss_memory_full"], mm), _child(["--child", "loss_memory_chunked"], mm)
        print(f"loss side (CE + TIDAL, 512 rows, V=151,936, hidden 1024, logits {full['logits_gib']:.2f} GiB fp32), "
              f"peak memory growth in units of the logit tensor: full logits {full['peak_over_logits']:.2f}x in "
              f"{full['loss_s']:.2f} s; chunked (trainer) {ours['peak_over_logits']:.2f}x in {ours['loss_s']:.2f} s")
        return 0
    cases = [a.case] if a.case else ["tide_shared", "tide_cross"]
    if a.scaling:
        a.phases = False
        print("\nscaling: median step seconds (ratio = baseline / ours)")
        print(f"{'case':<12} {'L':>5} {'V':>7} {'baseline s':>11} {'ours s':>8} {'ratio':>7} {'load':>5}")
        for case in cases:
            for length, vocab in ((128, 16384), (256, 16384), (512, 16384), (256, 151936)):
                r = _child(_config_args(case, length, vocab, a.teacher_dtype, a))
                bs = statistics.median(x["baseline_s"] for x in r["rounds"])
                os_ = statistics.median(x["ours_s"] for x in r["rounds"])
                load = statistics.mean(x["load"] for x in r["rounds"])
                print(f"{case:<12} {length:>5} {vocab:>7} {bs:>11.2f} {os_:>8.2f} "
                      f"{statistics.median(_ratios(r)):>6.2f}x {load:>5.1f}")
        return 0
    meds = {}
    for case in cases:
        meds[case] = _report_case(case, _child(_config_args(case, 256, 16384, a.teacher_dtype, a)))
    verdict = all(m >= GOAL for m in meds.values())
    print(f"\n{'goal met' if verdict else 'goal NOT met'}: median ratio >= {GOAL:.1f}x for "
          f"{', '.join(f'{c} ({m:.2f}x)' for c, m in meds.items())}; load average now {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

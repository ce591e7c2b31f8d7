"""The GPU check of the product: `tide-train` itself under torchrun on the visible GPUs, and what only a GPU can check.

    python tools/make_tiny_distill.py           # once: the tiny checkpoints and datasets that examples/tiny/ reads
    python benchmarks/gpu_check.py [--out gpu_check.json] [--nproc N] [--steps 16]
    python benchmarks/gpu_check.py --dry-run    # any machine: the commands it would run (JSON), nothing is run
    python benchmarks/gpu_check.py --smoke      # CPU rehearsal: the same runs on gloo, fp32, local layers, no FP8
                                                # (parity: local vs local_fused, the local parts with TE's norm fusion)

About 8 minutes on one GPU (--budget-s, default 480, bounds every part). Prints a table and writes all figures to
--out (JSON, written atomically). Refuses (exit 2) on a machine without CUDA unless --dry-run / --smoke; exits 1 when
a part fails (a run that errs, a non-finite loss, a parity mismatch, the budget exceeded).

Parts, each in its own process:
1. parity: Transformer Engine spec vs local spec, fp32 logits with TF32 off, on the same tiny checkpoint weights:
   the student over [xt ; x0] (block-diffusion mask), the WeDLM-layout teacher over [x0 ; xt], the LLaDA2 MoE
   teacher with key padding. Fails when max |TE - local| / max |local| > --parity-tolerance.
2. train: tide-train under torchrun on examples/tiny/ pipeline A (tide_cross: LLaDA2 teacher, chunk payload) and
   pipeline B (tide_shared: WeDLM-layout teacher, CompDemo, logit-row payload) in bf16, then B with FP8 for the
   student. From each run's metrics.jsonl (training/logging.py), over the steps after --warmup: tokens/s, peak
   memory, median teacher-forward and student-step time, MFU; and FP8 / bf16 student step time.
3. attention: benchmarks/attention.py at L=512 and 1024: FlexAttention (block mask from the description) vs SDPA
   with the explicit dense mask, forward + backward time and memory.

MFU = model FLOPs per step / (phase time x GPUs x the GPU's dense bf16 peak; FP8 runs: twice that), FLOPs counted
from the checkpoints' config.json:
- student step: 6 N (2T) + 6 h V T. N = non-embedding parameters, T = student tokens per step (the trunk runs over
  [xt ; x0], 2T positions; the LM head over the xt half, T rows). Nominal: the blocks the trainer skips
  (student.skip_unmasked_blocks) count as computed.
- teacher forward: 2 N_active T_t. N_active = the parameters one token passes through (an MoE layer: router,
  shared and top-k routed experts), T_t = the teacher input positions of the step (the trainer's teacher_tokens).
Attention-score FLOPs and the teacher's LM head (run only at the requested rows) are not counted.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity) by device name; FP8 doubles them on Hopper and Blackwell.
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "H800": 989.0, "A100": 312.0, "A800": 312.0, "L40S": 362.0,
                    "B200": 2250.0, "GB200": 2500.0}
PIPELINES = {"a": "examples/tiny/tiny_pipeline_a_tide_cross.yaml",
             "b": "examples/tiny/tiny_pipeline_b_tide_shared.yaml"}
CHECKPOINTS = {"student": "student", "a": "teacher_a", "b": "teacher_b"}  # under the artifacts directory


@dataclass
class TrainRun:
    """One tide-train run of the check: which config, with which overrides, how many ranks."""

    name: str
    pipeline: str  # "a" | "b"
    precision: str  # "bf16" | "fp8" | "fp32" (smoke)
    argv: list[str]
    log_dir: str
    env: dict = field(default_factory=dict)


def teacher_layout(pipeline: str, nproc: int) -> list[str]:
    """The tiny configs shard the teacher over 2 ranks (EP=2 in A, TP=2 in B); an odd world keeps it whole."""
    width = 2 if nproc % 2 == 0 else 1
    return [f"teacher.ep={width}", "teacher.tp=1"] if pipeline == "a" else [f"teacher.tp={width}"]


def train_runs(work: Path, nproc: int, steps: int, smoke: bool) -> list[TrainRun]:
    """The tide-train commands of the check: A and B in bf16 and B with FP8 (smoke: A and B in fp32, on CPU)."""
    plan = [("a", "fp32"), ("b", "fp32")] if smoke else [("a", "bf16"), ("b", "bf16"), ("b", "fp8")]
    runs = []
    for pipeline, precision in plan:
        name = f"{pipeline}_{precision}"
        out = work / name
        dtype = "fp32" if precision == "fp32" else "bf16"
        overrides = [f"output_dir={out}", f"logging.dir={out / 'logs'}", f"optim.train_steps={steps}",
                     "checkpoint.resume=none", "checkpoint.save_interval=1000000", "checkpoint.save_at_end=false",
                     "logging.log_interval=1", "logging.tensorboard=false", "data.valid=",
                     f"precision.dtype={dtype}", f"teacher.dtype={dtype}",
                     f"precision.fp8={str(precision == 'fp8').lower()}",
                     *teacher_layout(pipeline, nproc)]
        argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                "-m", "tide_megatron.cli.train", "--config", str(REPO / PIPELINES[pipeline]), *overrides]
        env = {"TIDE_BACKEND": "local"} if smoke else {}
        runs.append(TrainRun(name, pipeline, precision, argv, str(out / "logs"), env))
    return runs


def child_env(extra: Optional[dict] = None) -> dict:
    """The environment of every part: TorchDynamo on (compiled FlexAttention on GPU), this checkout importable."""
    env = {k: v for k, v in os.environ.items() if k != "TORCHDYNAMO_DISABLE"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in [os.environ.get("PYTHONPATH")] if p])
    env.update(extra or {})
    return env


# ---------------------------------------------------------------------------------------------------------------
# Reading a run's metrics and counting FLOPs
# ---------------------------------------------------------------------------------------------------------------


def read_metrics(log_dir: str, warmup: int) -> dict:
    """Per-step records of ``<log_dir>/metrics.jsonl`` (log_interval 1) → the run's figures after ``warmup`` steps."""
    path = Path(log_dir) / "metrics.jsonl"
    if not path.is_file():
        raise ValueError(f"{path}: no metrics file (did the run start?)")
    steps, summary = [], None
    for line in path.read_text().splitlines():
        record = json.loads(line)
        if "summary" in record:
            summary = record["summary"]
        elif "time/student_s" in record:
            steps.append(record)
    if not steps:
        raise ValueError(f"{path}: no training step was logged")
    measured = steps[warmup:] or steps[-1:]
    med = {key: statistics.median(r[key] for r in measured)
           for key in ("time/teacher_s", "time/student_s", "tokens", "teacher_tokens") if key in measured[0]}
    losses = [r["loss/total"] for r in steps]
    return {"steps": len(steps), "measured_steps": len(measured),
            "teacher_s": med.get("time/teacher_s", 0.0), "student_s": med["time/student_s"],
            "tokens_per_step": med["tokens"], "teacher_tokens_per_step": med.get("teacher_tokens", 0.0),
            "tokens_per_s": med["tokens"] / max(med.get("time/teacher_s", 0.0) + med["time/student_s"], 1e-12),
            "peak_memory_gib": max(r.get("memory/peak_gib", 0.0) for r in steps),
            "first_loss": losses[0], "last_loss": losses[-1], "finite": all(math.isfinite(v) for v in losses),
            "summary": summary}


def _layer_params(cfg: dict, layer: int) -> tuple[int, int]:
    """(all, active-per-token) parameters of one decoder layer from an HF config (Qwen3, WeDLM, LLaDA2)."""
    h = cfg["hidden_size"]
    hd = cfg.get("head_dim") or h // cfg["num_attention_heads"]
    attn = h * cfg["num_attention_heads"] * hd + 2 * h * cfg["num_key_value_heads"] * hd + \
        cfg["num_attention_heads"] * hd * h
    experts = cfg.get("num_experts") or 0
    if not experts or layer < cfg.get("first_k_dense_replace", 0):
        mlp = 3 * h * cfg["intermediate_size"]
        return attn + mlp, attn + mlp
    expert = 3 * h * cfg["moe_intermediate_size"]
    shared = cfg.get("num_shared_experts", 0) * expert
    router = h * experts
    return attn + router + shared + experts * expert, attn + router + shared + cfg["num_experts_per_tok"] * expert


def model_params(cfg: dict) -> dict:
    """Non-embedding parameters (all and per token) and the LM-head size of an HF config."""
    layers = [_layer_params(cfg, i) for i in range(cfg["num_hidden_layers"])]
    return {"non_embedding": sum(a for a, _ in layers), "active": sum(b for _, b in layers),
            "hidden": cfg["hidden_size"], "vocab": cfg["vocab_size"]}


def student_step_flops(params: dict, tokens: float) -> float:
    """6 N (2T) + 6 h V T: forward + backward of the trunk over [xt ; x0] and of the LM head over the xt half."""
    return 6 * params["non_embedding"] * 2 * tokens + 6 * params["hidden"] * params["vocab"] * tokens


def teacher_forward_flops(params: dict, teacher_tokens: float) -> float:
    """2 N_active T_t: one forward of every teacher input position."""
    return 2 * params["active"] * teacher_tokens


def peak_tflops(device_name: str) -> float:
    for key, value in PEAK_BF16_TFLOPS.items():
        if key in device_name:
            return value
    return float("nan")


def mfu(run: dict, student: dict, teacher: dict, gpus: int, peak: float, fp8: bool) -> dict:
    """Student-step and teacher-forward MFU of a run (see the module docstring)."""
    student_peak = peak * (2 if fp8 else 1) * 1e12 * gpus
    out = {"student_step_flops": student_step_flops(student, run["tokens_per_step"]),
           "teacher_forward_flops": teacher_forward_flops(teacher, run["teacher_tokens_per_step"])}
    out["student_mfu"] = out["student_step_flops"] / max(run["student_s"], 1e-12) / student_peak
    out["teacher_mfu"] = out["teacher_forward_flops"] / max(run["teacher_s"], 1e-12) / (peak * 1e12 * gpus)
    return out


# ---------------------------------------------------------------------------------------------------------------
# Part 1: TE-spec vs local-spec logits (runs in its own process, one GPU)
# ---------------------------------------------------------------------------------------------------------------


def parity_worker(artifacts: Path, seq: int, block: int, backends: tuple[str, str] = ("local", "te")) -> dict:
    """Max relative |TE - local| of each model's fp32 logits on one input (see the module docstring); ``backends``
    names the two layer-spec providers compared (the smoke run compares local with local_fused on CPU)."""
    import torch

    from tide_megatron.diffusion.inputs import bd3lm_inputs
    from tide_megatron.distributed import ParallelLayout, build_model_grid, init_distributed, seed_model_parallel_rng
    from tide_megatron.distributed.device import process_device
    from tide_megatron.models.attention_mask import BlockDiffusionMask, KeyPaddingMask
    from tide_megatron.models.gpt import ensure_global_memory_buffer
    from tide_megatron.models.registry import get_architecture

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    init_distributed()
    ensure_global_memory_buffer()
    device = process_device()
    results = {}
    for name, arch, folder in (("student", "qwen3", "student"), ("wedlm", "wedlm", "teacher_b"),
                               ("llada2", "llada2", "teacher_a")):
        hf = json.loads((artifacts / folder / "config.json").read_text())
        g = torch.Generator().manual_seed(0)
        b, vocab = 2, hf["vocab_size"]
        mask_id = hf.get("mask_token_id", vocab - 1)
        x0 = torch.randint(0, min(vocab, mask_id), (b, seq), generator=g)
        xt = torch.where(torch.rand(b, seq, generator=g) < 0.5, mask_id, x0)
        if name == "llada2":
            ids, pos = xt, torch.arange(seq).expand(b, seq)
            mask = KeyPaddingMask(torch.arange(seq)[None] < torch.tensor([[seq], [seq - 37]]))
        else:
            order = "xt_x0" if name == "student" else "x0_xt"  # §1.4 / §2.2
            ids, pos = bd3lm_inputs(xt, x0, order=order)
            mask = BlockDiffusionMask.halves(b, seq, block, order)
        logits = {}
        for backend in backends:
            with build_model_grid(ParallelLayout(), f"parity-{name}-{backend}") as grid:
                seed_model_parallel_rng(0)
                model, _, _ = get_architecture(arch).build_from_hf(str(artifacts / folder), grid.pgs, torch.float32,
                                                                   backend=backend)
                model = model.to(device).eval()
                with torch.no_grad():
                    logits[backend] = model(ids.to(device), pos.to(device), mask.to(device)).float().cpu()
                del model
        base, other = (logits[k] for k in backends)
        scale = base.abs().max().item()
        diff = (other - base).abs().max().item()
        results[name] = {"max_abs_diff": diff, "max_abs_logit": scale, "relative": diff / max(scale, 1e-12),
                         "shape": list(other.shape), "backends": list(backends)}
    return results


# ---------------------------------------------------------------------------------------------------------------
# The orchestration
# ---------------------------------------------------------------------------------------------------------------


class Budget:
    def __init__(self, seconds: float):
        self.deadline = time.monotonic() + seconds

    def left(self) -> float:
        return max(0.0, self.deadline - time.monotonic())


def run_part(argv: list[str], env: dict, budget: Budget, log: Path) -> tuple[bool, str]:
    """Run one part; its output goes to ``log``. (ok, why-not)."""
    if budget.left() < 5:
        return False, "skipped: the time budget is spent"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as fh:
        try:
            proc = subprocess.run(argv, env=env, stdout=fh, stderr=subprocess.STDOUT, timeout=budget.left(), cwd=REPO)
        except subprocess.TimeoutExpired:
            return False, f"timed out (budget); output in {log}"
    if proc.returncode:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
        return False, f"exit {proc.returncode}; output in {log}:\n{tail}"
    return True, ""


def plan(args, work: Path) -> dict:
    """Every command of the check (what --dry-run prints)."""
    runs = train_runs(work, args.nproc, args.steps, args.smoke)
    parity = [sys.executable, str(Path(__file__).resolve()), "--part", "parity", "--artifacts", str(args.artifacts),
              "--json", str(work / "parity.json"), "--parity-backends", *(("local", "local_fused") if args.smoke else
                                                                        ("local", "te"))]
    attention = [sys.executable, str(REPO / "benchmarks" / "attention.py"), "--json", str(work / "attention.json"),
                 "--lengths", *[str(n) for n in args.attention_lengths]]
    if args.smoke:
        attention += ["--device", "cpu", "--repeats", "1", "--heads", "4", "--groups", "2", "--head-dim", "32"]
    return {"work": str(work), "artifacts": str(args.artifacts), "nproc": args.nproc,
            "parity": {"argv": parity, "env": {"NVIDIA_TF32_OVERRIDE": "0"}},
            "train": [asdict(r) for r in runs], "attention": {"argv": attention, "env": {}}}


def check(args) -> dict:
    """Run the plan; the JSON document of the figures."""
    import torch

    work = Path(args.work or tempfile.mkdtemp(prefix="tide-gpu-check-"))
    steps = plan(args, work)
    budget = Budget(args.budget_s)
    report: dict = {"plan": steps, "failures": []}
    if torch.cuda.is_available():
        report["device"] = torch.cuda.get_device_name()
        report["gpus"] = args.nproc
    report["torch"] = torch.__version__
    try:
        import transformer_engine

        report["transformer_engine"] = getattr(transformer_engine, "__version__", "?")
    except Exception as err:  # reported, not fatal: the parity and FP8 parts then fail with TE's own error
        report["transformer_engine"] = f"not importable: {err}"

    def fail(part: str, why: str) -> None:
        report["failures"].append(f"{part}: {why}")
        print(f"gpu_check: {part} FAILED: {why}", file=sys.stderr)

    if steps["parity"] is not None:
        print(f"gpu_check: parity ({' vs '.join(steps['parity']['argv'][-2:])} spec) ...", flush=True)
        ok, why = run_part(steps["parity"]["argv"], child_env(steps["parity"]["env"]), budget, work / "parity.log")
        if ok:
            report["parity"] = json.loads((work / "parity.json").read_text())
            for name, r in report["parity"].items():
                r["ok"] = r["relative"] <= args.parity_tolerance
                if not r["ok"]:
                    fail("parity", f"{name}: max |TE - local| / max |local| = {r['relative']:.2e} > "
                                   f"{args.parity_tolerance:.0e}")
        else:
            fail("parity", why)

    report["train"] = {}
    for run in steps["train"]:
        print(f"gpu_check: tide-train {run['name']} ({args.steps} steps, {args.nproc} rank(s)) ...", flush=True)
        ok, why = run_part(run["argv"], child_env(run["env"]), budget, work / f"{run['name']}.log")
        if not ok:
            fail(f"train {run['name']}", why)
            continue
        try:
            figures = read_metrics(run["log_dir"], args.warmup)
        except ValueError as err:
            fail(f"train {run['name']}", str(err))
            continue
        if not figures["finite"]:
            fail(f"train {run['name']}",
                 f"a non-finite loss: first {figures['first_loss']}, last {figures['last_loss']}")
        report["train"][run["name"]] = figures

    configs = {k: json.loads((Path(args.artifacts) / v / "config.json").read_text()) for k, v in CHECKPOINTS.items()}
    sizes = {k: model_params(c) for k, c in configs.items()}
    report["model_params"] = sizes
    peak = peak_tflops(report.get("device", ""))
    report["peak_bf16_tflops"] = peak
    report["mfu"] = {name: mfu(r, sizes["student"], sizes[name[0]], args.nproc, peak, name.endswith("fp8"))
                     for name, r in report["train"].items()}
    if "b_fp8" in report["train"] and "b_bf16" in report["train"]:
        fp8, bf16 = report["train"]["b_fp8"]["student_s"], report["train"]["b_bf16"]["student_s"]
        report["fp8_vs_bf16"] = {"student_step_s_fp8": fp8, "student_step_s_bf16": bf16, "ratio": fp8 / bf16}

    print("gpu_check: attention (flex vs SDPA with the explicit mask) ...", flush=True)
    ok, why = run_part(steps["attention"]["argv"], child_env(steps["attention"]["env"]), budget,
                       work / "attention.log")
    if ok:
        report["attention"] = json.loads((work / "attention.json").read_text())
    else:
        fail("attention", why)
    report["ok"] = not report["failures"]
    report["elapsed_s"] = args.budget_s - budget.left()
    return report


def render(report: dict) -> str:
    """The table printed at the end."""
    lines = [f"gpu_check on {report.get('device', 'CPU (smoke)')}, {report.get('gpus', 0)} GPU(s); torch "
             f"{report['torch']}, Transformer Engine {report['transformer_engine']}"]
    for name, r in (report.get("parity") or {}).items():
        base, other = r["backends"]
        lines.append(f"  parity {name:<8} max|{other} - {base}| {r['max_abs_diff']:.2e} (relative {r['relative']:.2e}) "
                     f"{'ok' if r['ok'] else 'MISMATCH'}")
    lines.append(f"  {'run':<8} {'steps':>5} {'tok/s':>10} {'teacher s':>10} {'student s':>10} {'peak GiB':>9} "
                 f"{'teacher MFU':>12} {'student MFU':>12} {'loss first→last':>18}")
    for name, r in report.get("train", {}).items():
        m = report["mfu"].get(name, {})
        lines.append(f"  {name:<8} {r['steps']:>5} {r['tokens_per_s']:>10.0f} {r['teacher_s']:>10.4f} "
                     f"{r['student_s']:>10.4f} {r['peak_memory_gib']:>9.2f} {m.get('teacher_mfu', float('nan')):>12.2e}"
                     f" {m.get('student_mfu', float('nan')):>12.2e} {r['first_loss']:>8.3f}→{r['last_loss']:.3f}")
    if "fp8_vs_bf16" in report:
        f = report["fp8_vs_bf16"]
        lines.append(f"  FP8 / bf16 student step time: {f['student_step_s_fp8']:.4f} s / "
                     f"{f['student_step_s_bf16']:.4f} s = {f['ratio']:.2f}")
    for row in (report.get("attention") or {}).get("results", []):
        r = row["flex_over_dense"]
        lines.append(f"  attention L={row['length']}: flex / dense-mask SDPA fwd+bwd time {r['fwd_bwd_s']:.2f}, "
                     f"peak memory {r['peak_extra_bytes']:.2f}")
    lines.append("  OK" if report["ok"] else "  FAILED:\n    " + "\n    ".join(report["failures"]))
    return "\n".join(lines)


def _json_safe(value):
    """NaN / inf (e.g. MFU on a GPU without a known peak) become null: the report stays strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def build_parser() -> argparse.ArgumentParser:
    from tide_megatron.fixtures.artifacts import cache_dir

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="gpu_check.json", help="the JSON report (written atomically)")
    p.add_argument("--artifacts", type=Path, default=cache_dir() / "tiny-distill",
                   help="what tools/make_tiny_distill.py wrote (default: ${TIDE_CACHE_DIR}/tiny-distill)")
    p.add_argument("--nproc", type=int, default=None, help="ranks per run (default: the visible GPUs; smoke: 2)")
    p.add_argument("--steps", type=int, default=16, help="optimizer steps per training run")
    p.add_argument("--warmup", type=int, default=4, help="first steps left out of the timings (compilation)")
    p.add_argument("--parity-tolerance", type=float, default=1e-3, help="max |TE - local| / max |local|")
    p.add_argument("--attention-lengths", type=int, nargs="+", default=[512, 1024])
    p.add_argument("--budget-s", type=float, default=480.0, help="wall-clock budget of the whole check")
    p.add_argument("--work", help="directory for the runs' outputs (default: a fresh temporary one)")
    p.add_argument("--dry-run", action="store_true", help="print the commands as JSON and exit")
    p.add_argument("--smoke", action="store_true",
                   help="CPU rehearsal: gloo, fp32, local layers, no FP8, parity of local vs local_fused")
    p.add_argument("--part", choices=["parity"], help=argparse.SUPPRESS)
    p.add_argument("--json", help=argparse.SUPPRESS)
    p.add_argument("--parity-backends", nargs=2, default=["local", "te"], help=argparse.SUPPRESS)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.part == "parity":
        from tide_megatron.atomic import write_text_atomic

        result = parity_worker(args.artifacts, seq=128, block=32, backends=tuple(args.parity_backends))
        write_text_atomic(args.json, json.dumps(result, indent=2))
        return 0
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    args.nproc = args.nproc or (2 if args.smoke or not gpus else gpus)
    if args.smoke:
        args.steps, args.warmup, args.attention_lengths = min(args.steps, 3), 1, [64]
    if args.dry_run:
        print(json.dumps(plan(args, Path(args.work or "<work>")), indent=2))
        return 0
    if not gpus and not args.smoke:
        print("gpu_check: error: no CUDA device is visible (torch.cuda.is_available() is False); run it on a GPU node, "
              "or use --dry-run (the commands) or --smoke (a CPU rehearsal)", file=sys.stderr)
        return 2
    if gpus and args.nproc > gpus:
        print(f"gpu_check: error: --nproc {args.nproc} but only {gpus} GPU(s) are visible", file=sys.stderr)
        return 2
    missing = [v for v in CHECKPOINTS.values() if not (Path(args.artifacts) / v / "config.json").is_file()]
    if missing:
        print(f"gpu_check: error: {args.artifacts} lacks {', '.join(missing)}; build the tiny artifacts with "
              f"`python tools/make_tiny_distill.py` (or pass --artifacts)", file=sys.stderr)
        return 2
    report = check(args)
    from tide_megatron.atomic import write_text_atomic

    write_text_atomic(args.out, json.dumps(_json_safe(report), indent=2))
    print(render(report))
    print(f"gpu_check: figures written to {args.out}")
    if report["ok"] and not args.work:
        shutil.rmtree(report["plan"]["work"], ignore_errors=True)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())

"""Where tide-demo's time goes: per-step and per-run costs measured now, and the demo's total projected from them
for the current settings and for the previous ones (160 teacher steps, 2 student runs of 250 steps), in the
same run on the same machine, so the load cancels out of the comparison.

    python benchmarks/demo_budget.py [--steps 16]

Uses the demo's cache (tokenizers, datasets; fetched or built on first use) and a temporary output folder.
Prints the load average beside the figures: on a shared machine every absolute number is inflated alike.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")

from tide_megatron.cli.quiet import quiet_third_party_warnings  # noqa: E402

quiet_third_party_warnings()

import torch  # noqa: E402

from tide_megatron.demo import pipeline as demo  # noqa: E402
from tide_megatron.demo.pretrain_teacher import (TeacherPretrainConfig, TinyLLaDA2Shape, llada2_hf_config,  # noqa: E402
                                                 pretrain_llada2_teacher)
from tide_megatron.demo.settings import DemoSettings  # noqa: E402
from tide_megatron.distributed import init_distributed  # noqa: E402
from tide_megatron.fixtures.artifacts import cache_dir  # noqa: E402
from tide_megatron.training.export import export_student  # noqa: E402


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=16, help="steps of each measured run")
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    s = DemoSettings()
    cache_root = cache_dir() / "demo"
    cache_root.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    (student_tok, teacher_tok), tok_s = _timed(demo.load_tokenizers)
    data_root = cache_root / f"data-{demo._key(s.data_fields())}"
    (train_file, docs), _ = _timed(lambda: demo.write_corpus(s, data_root))
    data, prep_s = _timed(lambda: demo.preprocess_data(s, train_file, data_root))
    init_distributed()

    # teacher: seconds per pretraining step (its loop's own clock)
    shape = TinyLLaDA2Shape(hidden_size=s.teacher_hidden, head_dim=s.teacher_hidden // 4,
                            intermediate_size=2 * s.teacher_hidden, moe_intermediate_size=s.teacher_hidden // 2)
    hf = llada2_hf_config(shape, demo._round_up(len(teacher_tok)), teacher_tok.mask_id, teacher_tok.pad_id,
                          teacher_tok.eos_id)
    seqs = demo.teacher_sequences(data["train"])
    cfg = TeacherPretrainConfig(steps=args.steps, micro_batch_size=s.teacher_batch, lr=s.teacher_lr,
                                min_lr=s.teacher_lr / 10)
    _, result = pretrain_llada2_teacher(hf, seqs, cfg)
    teacher_per_step = result.seconds / args.steps

    # students, each mode: per step (the trainer's own step clock) and per run (the rest of the wall time:
    # trainer build, final held-out eval, checkpoint); then export + bits/byte of one student
    teacher_dir = next((p for p in sorted(cache_root.glob("teacher-*")) if (p / "pretrain_metrics.json").is_file()),
                       None)
    work = Path(tempfile.mkdtemp(prefix="demo-budget-"))
    try:
        init = demo.build_student_init(s, 0, student_tok, cache_root)
        student = {}
        for name, mode, _ in demo.VARIANTS:
            if mode != "ce" and teacher_dir is None:
                print("no cached demo teacher: run tide-demo once first (the TIDE-Cross step needs a teacher)")
                return 2
            r, wall = _timed(lambda: demo.train_student(mode, name, 0, replace(s, student_steps=args.steps), init,
                                                        str(teacher_dir) if mode != "ce" else None, data,
                                                        work / name))
            step_s = r["summary"]["teacher_time_s"] + r["summary"]["student_time_s"]
            student[name] = {"per_step_s": step_s / args.steps, "per_run_s": wall - step_s}
        (work / "hf").mkdir()
        hf_dir, export_s = _timed(lambda: export_student(r["checkpoints"], str(work / "hf" / "s")))
        _, bpb_s = _timed(lambda: demo.evaluate_bpb(hf_dir, docs, s))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    def project(teacher_steps: int, runs_per_variant: int, steps: int) -> dict:
        students = sum(runs_per_variant * (steps * v["per_step_s"] + v["per_run_s"] + export_s + bpb_s)
                       for v in student.values())
        teacher = teacher_steps * teacher_per_step
        return {"teacher_s": teacher, "students_s": students, "first_run_s": tok_s + prep_s + teacher + students,
                "rerun_s": students}

    now, before = project(s.teacher_steps, len(s.seeds), s.student_steps), project(160, 1, 250)
    out = {"load_average_1_5_15": [load_before, os.getloadavg()], "cpus": os.cpu_count(),
           "teacher_per_step_s": teacher_per_step, "students": student, "export_s": export_s, "bpb_eval_s": bpb_s,
           "tokenizers_s (this run: cached or not)": tok_s, "preprocess_s": prep_s,
           f"projected now ({s.teacher_steps} teacher steps, {len(s.seeds)} seeds x 2 runs x {s.student_steps} steps)": now,
           "projected before (160 teacher steps, 1 x 2 runs x 250 steps)": before}
    print(json.dumps(out, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Step time of a separate teacher pool against its parts: max(teacher, student) when the pool serves a step
ahead, their sum when it serves each step only when it is due; a colocated run on the same ranks for context.

Two ranks (one CPU core each on a 2-core machine; one GPU each on a GPU machine), the real trainer through
`training.teacher_server.build_trainer`, pipeline B (b_tide_cross: a dense Qwen3-layout teacher, token rows):

  separate, ahead      teacher on rank 1, student on rank 0 (DP1, one micro-batch of 8 per step), lookahead 1
  separate, in turn    the same, lookahead 0: the pool serves step k only when the loop reaches it, so teacher
                       and student take turns (what one device running both does)
  colocated            teacher and student on both ranks (student DP2, a micro-batch of 4 each): the same
                       global batch of 8 sequences per step

All layouts run in one pair of processes and take turns, repetition after repetition (medians are printed), so
a change in the machine's load reaches each of them; the first steps of each are warm-up. Measured in the same
run, per layout: the wall time per step, T = the teacher's compute per step (the pool's; colocated, the teacher
forwards inside the step), S = the student's own step time (its wait for payloads excluded), and the model state
each rank holds (student weights, gradients and Adam moments; teacher weights).

    python benchmarks/placement.py [--steps 10] [--warmup 2] [--reps 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SEQ, BLOCK, GLOBAL = 128, 16, 8  # sequences per optimizer step in every layout
STUDENT = dict(hidden=128, layers=4, heads=4, kv_heads=2)
TEACHER = dict(hidden=256, layers=6, heads=8, kv_heads=2)
LAYOUTS = {
    "separate, ahead": dict(teacher={"placement": "separate", "ranks": 1}, micro_batch=GLOBAL, lookahead=1),
    "separate, in turn": dict(teacher={"placement": "separate", "ranks": 1}, micro_batch=GLOBAL, lookahead=0),
    "colocated": dict(teacher={}, micro_batch=GLOBAL // 2, lookahead=1),
}


def _prepare(work: Path, n: int) -> None:
    from tests.helpers import tiny_distill as td

    td.write_qwen3(work / "student", **STUDENT, vocab=td.STUDENT_VOCAB, seed=1)
    td.write_qwen3(work / "teacher", **TEACHER, vocab=td.STUDENT_VOCAB, seed=2, extra=dict(td.DENSE_TEACHER_IDS))
    td.write_dataset(work / "data", n, "B", seq_length=SEQ)


def _config(work: Path, name: str, steps: int, run: str):
    from tests.helpers import tiny_distill as td
    from tide_megatron.config import config_from_dict

    layout = LAYOUTS[name]
    return config_from_dict({
        "preset": "b_tide_cross", "output_dir": str(work / "runs" / run),
        "student": {"checkpoint": str(work / "student"), "seq_length": SEQ, "block_size": BLOCK},
        "teacher": {"checkpoint": str(work / "teacher"), "dtype": "fp32", **layout["teacher"]},
        "data": {"train": str(work / "data"), "micro_batch_size": layout["micro_batch"], "num_workers": 0},
        "optim": {"train_steps": steps, "lr": 1e-4},
        "objective": {"shared_vocab": td.STUDENT_VOCAB - 8},
        "precision": {"dtype": "fp32"},
        "checkpoint": {"resume": "none", "save_interval": 10**6, "save_at_end": False},  # the flag: a sync a step
        "logging": {"tensorboard": False, "log_interval": 1}})


def _state_mib(trainer) -> float:
    """Model state this rank holds: the student's parameters, gradients and optimizer state, the teacher's weights."""
    import torch

    total = 0
    if getattr(trainer, "model", None) is not None:
        for p in trainer.model.parameters():
            total += p.numel() * p.element_size() + p.main_grad.numel() * p.main_grad.element_size()
        for opt in getattr(trainer.optimizer, "chained_optimizers", [trainer.optimizer]):
            for state in opt.optimizer.state.values():  # this rank's shard of the Adam moments
                total += sum(v.numel() * v.element_size() for v in state.values() if isinstance(v, torch.Tensor))
    if trainer.teacher is not None:
        total += sum(p.numel() * p.element_size() for p in trainer.teacher.engine.model.parameters())
    return total / 2**20


def _worker(rank: int, world: int, port: int, work: str, steps: int, warmup: int, reps: int, out: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    import torch
    import torch.distributed as dist

    from tide_megatron.data.indexed import TideAlignedDataset
    from tide_megatron.training.teacher_server import TeacherServer, build_trainer

    torch.set_num_threads(1)
    work_dir = Path(work)
    data = TideAlignedDataset(work_dir / "data")
    rows = []
    for rep in range(reps):  # the layouts take turns, so a change in the machine's load reaches all of them
        for name in LAYOUTS:
            run = f"{name.replace(', ', '-').replace(' ', '_')}-{rep}"
            trainer = build_trainer(_config(work_dir, name, warmup + steps, run), data,
                                    stream=open(os.devnull, "w"), lookahead_steps=LAYOUTS[name]["lookahead"])
            trainer.run(stop_after=warmup)
            dist.barrier()
            t0 = time.perf_counter()
            trainer.run()
            dist.barrier()
            wall = (time.perf_counter() - t0) / steps
            hist = trainer.logger.history
            mean = (lambda key: sum(v for _, v in hist[key][-steps:]) / steps if key in hist else None)
            rows.append({"layout": name, "rep": rep, "rank": rank, "wall_s": wall, "teacher_s": mean("time/teacher_s"),
                         "student_s": mean("time/student_s"), "state_mib": _state_mib(trainer),
                         "role": "teacher pool" if isinstance(trainer, TeacherServer) else "student"})
            trainer.close()
    everyone = [None] * world
    dist.all_gather_object(everyone, rows)
    if rank == 0:
        Path(out).write_text(json.dumps([r for part in everyone for r in part]))
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _median(values: list[float]) -> float:
    values = sorted(values)
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else 0.5 * (values[mid - 1] + values[mid])


def summarise(rows: list[dict]) -> dict[str, dict[str, float]]:
    """Per layout (median over repetitions): step time, T (teacher compute per step), S (the student's step)."""
    out = {}
    for name in LAYOUTS:
        mine = [r for r in rows if r["layout"] == name]
        reps = sorted({r["rep"] for r in mine})
        step = _median([max(r["wall_s"] for r in mine if r["rep"] == k) for k in reps])
        teacher_rows = [r for r in mine if r["role"] == "teacher pool"] or mine  # colocated: inside the step
        T = _median([r["teacher_s"] for r in teacher_rows])
        S = _median([r["student_s"] for r in mine if r["role"] == "student"])
        state = {r["role"] if r["role"] == "teacher pool" else f"rank {r['rank']}": r["state_mib"]
                 for r in mine if r["rep"] == 0}
        out[name] = {"step_s": step, "T_s": T, "S_s": S, "state_mib": state}
    return out


def main() -> int:
    import torch.multiprocessing as mp

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=10, help="timed optimizer steps per layout and repetition")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--reps", type=int, default=3, help="repetitions (the layouts take turns)")
    p.add_argument("--json", default="", help="also write the figures here")
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tide-placement-bench-"))
    _prepare(work, GLOBAL * (args.steps + args.warmup))
    out = work / "rows.json"
    mp.spawn(_worker, args=(2, _free_port(), str(work), args.steps, args.warmup, args.reps, str(out)), nprocs=2)
    summary = summarise(json.loads(out.read_text()))
    print(f"2 ranks, {GLOBAL} sequences x {SEQ} tokens per step; medians of {args.reps} repetitions of "
          f"{args.steps} steps")
    print(f"{'layout':<19}{'step s':>8}{'T s':>8}{'S s':>8}{'max(T,S)':>10}{'T+S':>8}{'step/max':>10}{'step/sum':>10}"
          f"   model state per rank (MiB)")
    for name, m in summary.items():
        T, S, step = m["T_s"], m["S_s"], m["step_s"]
        state = ", ".join(f"{k} {v:.1f}" for k, v in m["state_mib"].items())
        print(f"{name:<19}{step:>8.3f}{T:>8.3f}{S:>8.3f}{max(T, S):>10.3f}{T + S:>8.3f}{step / max(T, S):>10.2f}"
              f"{step / (T + S):>10.2f}   {state}")
    ahead, turn = summary["separate, ahead"], summary["separate, in turn"]
    print(f"separate, ahead: step {ahead['step_s']:.3f} s = {ahead['step_s'] / max(ahead['T_s'], ahead['S_s']):.2f} x "
          f"max(T, S) and {ahead['step_s'] / (ahead['T_s'] + ahead['S_s']):.2f} x (T + S) of its own T and S")
    print(f"separate, in turn: step {turn['step_s']:.3f} s = {turn['step_s'] / (turn['T_s'] + turn['S_s']):.2f} x "
          f"(T + S); each side alone: T {turn['T_s']:.3f} s, S {turn['S_s']:.3f} s")
    print(f"running at the same time slowed the teacher {ahead['T_s'] / turn['T_s']:.2f}x and the student "
          f"{ahead['S_s'] / turn['S_s']:.2f}x (shared cores and memory bandwidth; 1.00x on devices of their own)")
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

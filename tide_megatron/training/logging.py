"""Training metrics: TensorBoard scalars, one console line per log interval, a final summary.

Scalars (DESIGN §1): every loss term, λ, learning rate, grad norm, student tokens/s, teacher vs student
time, peak memory. Values are averaged over the log interval and across data-parallel ranks; only
global rank 0 writes. The same values go to ``<log dir>/metrics.jsonl`` (one JSON object per flush, held-out
evaluation and the summary), for scripts such as benchmarks/gpu_check.py.
"""

from __future__ import annotations

import json
import math
import os
import resource
import sys
import time
from collections import defaultdict
from typing import Optional, TextIO

import torch
import torch.distributed as dist
from torch.utils.tensorboard import SummaryWriter

from tide_megatron.distributed.device import process_device

METRICS_FILE = "metrics.jsonl"


def peak_memory_gib() -> float:
    """Peak device memory on GPU (allocator), peak resident set size on CPU; GiB."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # ru_maxrss is KiB on Linux


class MetricsLogger:
    """Accumulates per-step scalars and flushes them every ``log_interval`` optimizer steps."""

    def __init__(self, log_dir: str, log_interval: int, tensorboard: bool = True, stream: TextIO = sys.stdout,
                 group: Optional[dist.ProcessGroup] = None, total_steps: int = 0,
                 device: Optional[torch.device] = None) -> None:
        self.log_interval = log_interval
        self.group = group
        self.device = process_device() if device is None else device  # of the all-reduce (NCCL: the GPU)
        self.total_steps = total_steps
        self.stream = stream
        self.is_writer = not dist.is_initialized() or dist.get_rank() == 0
        self.writer = None
        self.jsonl = None
        if self.is_writer and log_dir:
            os.makedirs(log_dir, exist_ok=True)
            self.jsonl = open(os.path.join(log_dir, METRICS_FILE), "a", encoding="utf-8")
        if tensorboard and self.is_writer:
            self.writer = SummaryWriter(log_dir=log_dir)
        self._sums: dict[str, float] = defaultdict(float)
        self._counts: dict[str, int] = defaultdict(int)
        self._last: dict[str, float] = {}
        self.history: dict[str, list[tuple[int, float]]] = defaultdict(list)
        self._start = time.perf_counter()
        self._tokens_total = 0
        self._teacher_time_total = 0.0
        self._student_time_total = 0.0
        self._steps_logged = 0

    def record(self, step: int, scalars: dict[str, float]) -> None:
        """Add one optimizer step's scalars (already Python floats)."""
        for key, value in scalars.items():
            self._sums[key] += float(value)
            self._counts[key] += 1
        self._tokens_total += int(scalars.get("tokens", 0))
        self._teacher_time_total += float(scalars.get("time/teacher_s", 0.0))
        self._student_time_total += float(scalars.get("time/student_s", 0.0))
        self._steps_logged += 1
        if step % self.log_interval == 0 or step == self.total_steps:
            self.flush(step)

    def _reduced_means(self) -> dict[str, float]:
        keys = sorted(self._sums)
        if not keys:
            return {}
        values = torch.tensor([self._sums[k] / max(1, self._counts[k]) for k in keys], dtype=torch.float64,
                              device=self.device)
        if dist.is_initialized() and self.group is not None and dist.get_world_size(self.group) > 1:
            dist.all_reduce(values, group=self.group)
            values /= dist.get_world_size(self.group)
        return dict(zip(keys, values.tolist()))

    def flush(self, step: int) -> dict[str, float]:
        """Write the interval's means to TensorBoard and print one progress line (collective over ``group``)."""
        means = self._reduced_means()
        if not means:
            return {}
        means["memory/peak_gib"] = peak_memory_gib()
        self._sums.clear()
        self._counts.clear()
        self._last = means
        for key, value in means.items():
            self.history[key].append((step, value))
        if self.is_writer:
            if self.writer is not None:
                for key, value in means.items():
                    if math.isfinite(value):
                        self.writer.add_scalar(key, value, step)
                self.writer.flush()
            self._write_json({"step": step, **means})
            self.stream.write(self._progress_line(step, means) + "\n")
            self.stream.flush()
        return means

    def _write_json(self, record: dict) -> None:
        if self.jsonl is not None:
            self.jsonl.write(json.dumps(record) + "\n")
            self.jsonl.flush()

    def _progress_line(self, step: int, m: dict[str, float]) -> str:
        parts = [f"step {step}/{self.total_steps}"]
        for key in sorted(k for k in m if k.startswith("loss/")):
            parts.append(f"{key[5:]} {m[key]:.4f}")
        for key, fmt in (("lambda", "λ {:.3f}"), ("lr", "lr {:.2e}"), ("grad_norm", "gnorm {:.3f}"),
                         ("tokens_per_s", "{:.0f} tok/s"), ("time/teacher_s", "teacher {:.2f}s"),
                         ("time/student_s", "student {:.2f}s"), ("memory/peak_gib", "peak {:.2f} GiB")):
            if key in m:
                parts.append(fmt.format(m[key]))
        return " | ".join(parts)

    def log_eval(self, step: int, scalars: dict[str, float]) -> None:
        """Held-out metrics (already reduced across ranks)."""
        for key, value in scalars.items():
            self.history[key].append((step, value))
        if self.is_writer:
            if self.writer is not None:
                for key, value in scalars.items():
                    self.writer.add_scalar(key, value, step)
                self.writer.flush()
            self._write_json({"step": step, **scalars})
            text = " | ".join(f"{k} {v:.4f}" for k, v in sorted(scalars.items()))
            self.stream.write(f"eval step {step} | {text}\n")
            self.stream.flush()

    def summary(self, step: int) -> dict[str, float]:
        """The run's totals; printed once at the end by rank 0."""
        elapsed = time.perf_counter() - self._start
        out = {
            "steps": float(self._steps_logged),
            "final_step": float(step),
            "elapsed_s": elapsed,
            "tokens_per_s": self._tokens_total / elapsed if elapsed > 0 else 0.0,
            "teacher_time_s": self._teacher_time_total,
            "student_time_s": self._student_time_total,
            "peak_memory_gib": peak_memory_gib(),
        }
        for key, value in self._last.items():
            if key.startswith("loss/"):
                out[f"last_{key[5:]}"] = value
        if self.is_writer:
            self._write_json({"summary": out})
            self.stream.write("summary | " + " | ".join(f"{k} {v:.4g}" for k, v in out.items()) + "\n")
            self.stream.flush()
        return out

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        if self.jsonl is not None:
            self.jsonl.close()
            self.jsonl = None

"""Real ``tide-train`` processes for the end-to-end and fault tests: tiny run artifacts, commands, and jobs that
never outlive a test (each runs in its own session; every process it started is SIGKILLed at the end)."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import psutil
import yaml

REPO = Path(__file__).resolve().parents[2]
STEP_LINE = re.compile(r"^step (\d+)/\d+ .*\| total ([0-9.]+)")
DATA_FIELDS = ("student_ids", "student_labels", "teacher_ids", "pairs")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env(**extra: str) -> dict:
    """The child environment: this checkout first, one thread, and a free port for a one-rank world's store
    (the default port is derived from the pid and can collide with another job on a busy machine)."""
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "TORCHDYNAMO_DISABLE": "1",
            "PYTHONUNBUFFERED": "1", "MASTER_PORT": str(free_port()), **extra}


def losses(text: str) -> dict[int, str]:
    """``{step: printed total loss}`` from a run's console output."""
    return {int(m.group(1)): m.group(2) for m in map(STEP_LINE.match, text.splitlines()) if m}


def train_command(config: Path, out: Path, *overrides: str, nproc: int = 1) -> list[str]:
    """``tide-train`` as a plain process (one rank: what srun starts per task) or under torchrun."""
    module = ["-m", "tide_megatron.cli.train", "--config", str(config), f"output_dir={out}", *overrides]
    if nproc == 1:
        return [sys.executable, *module]
    return [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--master_port",
            str(free_port()), *module]


def write_dataset(out: Path, n: int, seq_length: int = 48) -> None:
    """A tide-preprocess directory of ``n`` tiny pipeline-B samples."""
    from tests.helpers import tiny_distill as td
    from tide_megatron.data.indexed import DatasetWriter

    with DatasetWriter(out, fields=DATA_FIELDS) as writer:
        for s in td.make_samples(n, "B"):
            writer.add({k: np.asarray(s[k]).reshape(-1) for k in DATA_FIELDS})
        writer.meta = td.dataset_meta("B", seq_length=seq_length)


def write_ce_run(root: Path, steps: int, num_workers: int = 2, samples: int = 64, name: str = "config",
                 **sections: dict) -> Path:
    """A tiny student, a dataset and a CE-only config (no teacher: the cheapest real run); returns the config."""
    from tests.helpers import tiny_distill as td

    root.mkdir(parents=True, exist_ok=True)
    if not (root / "student").is_dir():
        td.write_student(root / "student")
    if not (root / "data").is_dir():
        write_dataset(root / "data", samples)
    cfg = {"student": {"checkpoint": str(root / "student"), "seq_length": 48, "block_size": 16},
           "data": {"train": str(root / "data"), "micro_batch_size": 2, "num_workers": num_workers},
           "objective": {"mode": "ce"},
           "optim": {"train_steps": steps, "lr": 1e-3, "warmup_ratio": 0.0},
           "precision": {"dtype": "fp32"},
           "checkpoint": {"save_interval": 100000, "resume": "auto"},
           "logging": {"log_interval": 1, "tensorboard": False}}
    for section, values in sections.items():
        cfg.setdefault(section, {}).update(values)
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


class Job:
    """A command in its own session, its output collected by threads; `kill` (also on leaving the ``with``)
    SIGKILLs its process group and every descendant ever seen, so a failing test leaves nothing running."""

    def __init__(self, argv: Sequence[str], **env_extra: str) -> None:
        self.argv = list(argv)
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     cwd=REPO, env=env(**env_extra), start_new_session=True)
        self.out: list[str] = []
        self.err: list[str] = []
        self._seen: dict[int, psutil.Process] = {}
        self._lines = threading.Condition()
        self._readers = [threading.Thread(target=self._read, args=(self.proc.stdout, self.out), daemon=True),
                         threading.Thread(target=self._read, args=(self.proc.stderr, self.err), daemon=True)]
        self._sampler = threading.Thread(target=self._sample, daemon=True)
        for thread in (*self._readers, self._sampler):
            thread.start()

    def _sample(self) -> None:
        """Remember every descendant (DataLoader workers, ranks, writers) while the job runs."""
        while self.proc.poll() is None:
            self.descendants()
            time.sleep(0.1)

    def _read(self, pipe, sink: list[str]) -> None:
        for line in pipe:
            with self._lines:
                sink.append(line)
                self._lines.notify_all()

    @property
    def stdout(self) -> str:
        return "".join(self.out)

    @property
    def stderr(self) -> str:
        return "".join(self.err)

    def descendants(self) -> list[psutil.Process]:
        """The live processes below the job's first process (also remembered for `kill`)."""
        try:
            found = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            found = []
        for p in found:
            self._seen.setdefault(p.pid, p)
        return found

    def wait_for(self, pattern: str, timeout: float, stream: str = "out") -> re.Match:
        """Block until a line of stdout (or stderr) matches ``pattern``; fail the test on timeout or exit."""
        regex, sink = re.compile(pattern), self.out if stream == "out" else self.err
        deadline = time.monotonic() + timeout
        checked = 0
        with self._lines:
            while True:
                for line in sink[checked:]:
                    m = regex.search(line)
                    if m:
                        self.descendants()
                        return m
                checked = len(sink)
                if self.proc.poll() is not None and not any(r.is_alive() for r in self._readers):
                    raise AssertionError(f"{pattern!r} never appeared; exit {self.proc.returncode}\n"
                                         f"{self.stderr[-3000:]}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{pattern!r} did not appear within {timeout} s\n{self.stderr[-3000:]}")
                self.descendants()
                self._lines.wait(min(left, 0.2))

    def signal_group(self, sig: int) -> None:
        """``kill -SIG -- -PGID``: what SLURM sends to every process of a job step."""
        self.descendants()
        os.killpg(self.proc.pid, sig)

    def finish(self, timeout: float) -> int:
        """Wait for the exit (failing the test if it takes longer) and for the output; returns the exit status."""
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"{self.argv[:6]}... did not exit within {timeout} s (hung)\n{self.stderr[-3000:]}")
        for reader in self._readers:
            reader.join(timeout=10)
        return self.proc.returncode

    def survivors(self, grace: float = 5.0) -> list[psutil.Process]:
        """Processes of this job still alive ``grace`` seconds after its exit (should be none)."""
        deadline = time.monotonic() + grace
        while True:
            alive = [p for p in list(self._seen.values()) if _alive(p)]
            if not alive or time.monotonic() > deadline:
                return alive
            time.sleep(0.1)

    def kill(self) -> None:
        self.descendants()
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        for p in list(self._seen.values()):
            try:
                p.kill()
            except psutil.Error:
                pass
        self.proc.wait()

    def __enter__(self) -> "Job":
        return self

    def __exit__(self, *exc) -> None:
        self.kill()


def describe(processes: Sequence[psutil.Process]) -> list[str]:
    """``pid: command line`` of each process, for an assertion message (whatever state they are in)."""
    out = []
    for p in processes:
        try:
            out.append(f"{p.pid}: {' '.join(p.cmdline())[:200]}")
        except psutil.Error as err:
            out.append(f"{p.pid}: ({type(err).__name__})")
    return out


def _alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def run_job(argv: Sequence[str], timeout: float, **env_extra: str) -> Job:
    """Run a command to its end (failing the test if it hangs); the finished `Job`."""
    with Job(argv, **env_extra) as job:
        job.finish(timeout)
    return job


def last_line(text: str) -> Optional[str]:
    lines = [ln for ln in text.splitlines() if ln.strip() and "warn" not in ln.lower()]
    return lines[-1] if lines else None

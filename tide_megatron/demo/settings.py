"""What shapes a demo run, and the checks of a run's arguments: cheap to import (the CLI checks flags with it
before loading torch and megatron-core)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass
class DemoSettings:
    """Everything that shapes a demo run (the cache keys of the teacher, inits and datasets derive from it)."""

    seeds: tuple[int, ...] = (0, 1, 2)  # student init, data order and noise: one pair of runs per seed
    data_seed: int = 0  # the corpus sample, the held-out text, the teacher and the evaluation noise
    train_conversations: int = 1200
    heldout_bytes: int = 24000
    prompt_lines: int = 3
    response_lines: int = 5
    max_response_chars: int = 300
    student_seq_length: int = 128
    block_size: int = 32
    # teacher (LLaDA2 MoE) pretraining: 80 steps give 4.10 held-out bits/byte against 3.80 after 160 (measured)
    teacher_hidden: int = 128
    teacher_steps: int = 80
    teacher_batch: int = 16
    teacher_lr: float = 3e-3
    # students (Qwen3 BD3LM): 6 runs of the real trainer share the time budget
    student_hidden: int = 64
    student_layers: int = 2
    student_steps: int = 50
    student_batch: int = 8
    student_lr: float = 3e-3
    bpb_draws: int = 2

    def data_fields(self) -> dict:
        """The settings the corpus and the preprocessed datasets depend on (their cache key)."""
        names = ("data_seed", "train_conversations", "prompt_lines", "response_lines", "max_response_chars",
                 "student_seq_length")
        return {n: getattr(self, n) for n in names}

    @classmethod
    def quick(cls) -> "DemoSettings":
        """Seconds, not minutes: for tests and smoke runs (numbers mean little)."""
        return cls(seeds=(0, 1), train_conversations=48, heldout_bytes=3000, teacher_steps=3, teacher_batch=4,
                   student_steps=2, student_batch=4, bpb_draws=1)


class DemoError(RuntimeError):
    """A phase failed for a reason the user can act on; the message says which and what to do."""


def check_run(s: DemoSettings, output_dir: str) -> Path:
    """The resolved output directory, once the settings and the directory are fit for a run; else `DemoError`."""
    if not s.seeds or len(set(s.seeds)) != len(s.seeds):
        raise DemoError(f"--seeds: expected distinct seeds, got {list(s.seeds)}")
    for value, flag in ((s.student_steps, "--steps"), (s.teacher_steps, "--teacher-steps")):
        if value < 1:
            raise DemoError(f"{flag}: expected an integer >= 1, got {value}")
    out_dir = Path(output_dir).expanduser().resolve()
    if out_dir.exists() and not (out_dir / "results.json").exists() and any(out_dir.iterdir()):
        raise DemoError(f"--output-dir {out_dir}: exists and is not a tide-demo output (no results.json); "
                        f"refusing to replace it")
    return out_dir

"""Real text for the tiny default: conversations cut from the installed Python standard library.

Each sample asks the assistant to continue a stretch of a stdlib module (code, comments and docstrings
are real text), so the student learns a supervised response after a prompt, as in spec §1.2. Files are
assigned to the train or held-out split by a hash of their path, so the split is stable across machines.
"""

from __future__ import annotations

import hashlib
import json
import os
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from tide_megatron.atomic import staged_path


@dataclass(frozen=True)
class CorpusSpec:
    """How to cut the stdlib into samples."""

    prompt_lines: int = 6
    response_lines: int = 10
    max_response_chars: int = 600
    heldout_fraction: float = 0.1


def stdlib_root() -> Path:
    """The directory of the running interpreter's standard library."""
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_modules(root: Path | None = None) -> list[Path]:
    """Python source files of the stdlib, without test suites and third-party packages, sorted."""
    root = root or stdlib_root()
    skip = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__", "lib2to3"}
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in skip and not d.startswith("test"))
        files.extend(Path(dirpath) / f for f in sorted(filenames) if f.endswith(".py"))
    return files


def split_of(path: Path, root: Path, heldout_fraction: float) -> str:
    """'heldout' or 'train', decided by a hash of the path relative to the stdlib root."""
    digest = hashlib.sha256(str(path.relative_to(root)).encode()).digest()
    return "heldout" if digest[0] / 256.0 < heldout_fraction else "train"


def iter_conversations(split: str, spec: CorpusSpec = CorpusSpec(), root: Path | None = None) -> Iterator[dict]:
    """Yield `{"messages": [...]}` conversations of one split ('train' or 'heldout')."""
    if split not in ("train", "heldout"):
        raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
    root = root or stdlib_root()
    window = spec.prompt_lines + spec.response_lines
    for path in stdlib_modules(root):
        if split_of(path, root, spec.heldout_fraction) != split:
            continue
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (UnicodeDecodeError, OSError):
            continue
        module = ".".join(path.relative_to(root).with_suffix("").parts)
        for start in range(0, max(len(lines) - window + 1, 0), window):
            prompt = "\n".join(lines[start:start + spec.prompt_lines])
            response = "\n".join(lines[start + spec.prompt_lines:start + window])[: spec.max_response_chars]
            if not response.strip() or not prompt.strip():
                continue
            yield {"messages": [
                {"role": "user", "content": f"Continue the Python module `{module}`:\n{prompt}"},
                {"role": "assistant", "content": response},
            ]}


def write_jsonl(path: Path, split: str, limit: int, spec: CorpusSpec = CorpusSpec()) -> int:
    """Write up to ``limit`` conversations of ``split`` to ``path`` atomically; returns the count."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with staged_path(path) as tmp, open(tmp, "w", encoding="utf-8") as out:
        for conversation in iter_conversations(split, spec):
            out.write(json.dumps(conversation, ensure_ascii=False) + "\n")
            count += 1
            if count >= limit:
                break
    return count

"""Real text for tests, demos and benchmarks without network: the CPython standard library (DESIGN §5).

Snippets are code (consecutive source lines of stdlib modules) and prose (module and function docstrings),
each wrapped as a two-turn conversation. Selection is deterministic given the seed.
"""

from __future__ import annotations

import ast
import random
import sysconfig
from pathlib import Path


def stdlib_files() -> list[Path]:
    """The stdlib's top-level and package .py files, excluding tests, sorted for determinism."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = [p for p in root.rglob("*.py")
             if not any(part in ("test", "tests", "idlelib", "site-packages", "lib2to3") for part in p.parts)]
    return sorted(files)


def _docstrings(tree: ast.AST) -> list[str]:
    out = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=True)
            if doc and len(doc) >= 80:
                out.append(doc)
    return out


def stdlib_conversations(n: int, seed: int = 0, code_lines: int = 24, prose_fraction: float = 0.5) -> list[dict]:
    """`n` conversations `{"messages": [...], "kind": "code"|"prose", "source": "<module>"}` from the stdlib."""
    rng = random.Random(seed)
    files = stdlib_files()
    rng.shuffle(files)
    out: list[dict] = []
    for path in files:
        if len(out) >= n:
            break
        try:
            text = path.read_text(encoding="utf-8")
            tree = ast.parse(text)
        except (UnicodeDecodeError, SyntaxError, ValueError):
            continue
        module = path.stem
        if rng.random() < prose_fraction:
            docs = _docstrings(tree)
            if not docs:
                continue
            doc = rng.choice(docs)
            out.append({"kind": "prose", "source": module, "messages": [
                {"role": "user", "content": f"Explain what this part of the Python module `{module}` does."},
                {"role": "assistant", "content": doc}]})
        else:
            lines = text.splitlines(keepends=True)
            if len(lines) < code_lines:
                continue
            start = rng.randrange(0, len(lines) - code_lines + 1)
            code = "".join(lines[start : start + code_lines])
            if not code.strip():
                continue
            out.append({"kind": "code", "source": module, "messages": [
                {"role": "system", "content": "You are a Python expert."},
                {"role": "user", "content": f"Show lines {start + 1}-{start + code_lines} of `{module}`."},
                {"role": "assistant", "content": code}]})
    if len(out) < n:
        raise RuntimeError(f"only {len(out)} stdlib snippets found (wanted {n}) under {sysconfig.get_paths()['stdlib']}")
    return out

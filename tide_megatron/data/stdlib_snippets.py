"""Varied real snippets for alignment tests and benchmarks: stdlib code and docstring prose (DESIGN §5).

Unlike `data.corpus` (the training corpus: module continuations with a stable train/held-out split), this
samples files at random (seeded) and mixes two kinds of text: code windows (with a system turn) and
docstrings (prose), so tokenizer pairs are exercised on both indentation-heavy code and natural language.
"""

from __future__ import annotations

import ast
import random

from tide_megatron.data.corpus import stdlib_modules, stdlib_root


def _docstrings(tree: ast.AST) -> list[str]:
    out = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=True)
            if doc and len(doc) >= 80:
                out.append(doc)
    return out


def stdlib_snippets(n: int, seed: int = 0, code_lines: int = 24, prose_fraction: float = 0.5) -> list[dict]:
    """`n` conversations `{"messages": [...], "kind": "code"|"prose", "source": "<module>"}` from the stdlib."""
    rng = random.Random(seed)
    files = stdlib_modules()
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
        raise RuntimeError(f"only {len(out)} stdlib snippets found (wanted {n}) under {stdlib_root()}")
    return out

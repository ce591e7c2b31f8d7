"""Evaluation results: one JSON document (written atomically) and a printed table."""

from __future__ import annotations

import json
from typing import Any

from tide_megatron.atomic import write_text_atomic


def write_json_atomic(path: str, payload: dict) -> None:
    """Write ``payload`` to ``path`` through a temp file in the same directory, then rename."""
    write_text_atomic(path, json.dumps(payload, indent=2, sort_keys=True) + "\n")


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1e4 else f"{value:.4g}"
    return str(value)


def format_table(results: dict) -> str:
    """Two columns, ``metric | value``, one row per scalar of each task in ``results['tasks']``."""
    rows = [("model", str(results.get("model", "?")))]
    if "parameters" in results:
        rows.append(("parameters", f"{results['parameters']:,}"))
    for task, metrics in results.get("tasks", {}).items():
        for key, value in metrics.items():
            if isinstance(value, (int, float, str)) and not isinstance(value, bool):
                if key == "peak_memory_bytes":
                    rows.append((f"{task}.peak_memory_GiB", f"{value / 2**30:.3f}"))
                else:
                    rows.append((f"{task}.{key}", _fmt(value)))
    width = max(len(k) for k, _ in rows)
    lines = [f"{'metric'.ljust(width)} | value", f"{'-' * width}-+-{'-' * 12}"]
    lines += [f"{k.ljust(width)} | {v}" for k, v in rows]
    return "\n".join(lines)

"""Harness runs for ``tide-eval``: ``--tasks lm_eval:TASKS`` and ``--suite paper`` on one loaded model.

Checks come before any generation: every name must be a harness task, group or tag; with
``--data-dir`` every needed local file must exist; tasks that execute model-written code need the
harness's unsafe-code switch. Results are the harness's own dictionaries (per suite benchmark, or one
for the ``lm_eval:`` tasks), gathered on rank 0; other ranks get None.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

from tide_megatron.eval.harness import suite as paper_suite
from tide_megatron.eval.harness.offline import leaf_tasks, prepare_tasks


class UnsafeCodeError(ValueError):
    """A code-executing task was asked for without the unsafe-code switch."""


@dataclass
class HarnessRequest:
    """What to run: plain harness task names, and/or the paper suite (all or some benchmarks)."""

    tasks: Sequence[str] = ()
    suite: bool = False
    suite_tasks: Sequence[str] = ()
    data_dir: Optional[str] = None
    include_path: Optional[str] = None
    num_fewshot: Optional[int] = None
    limit: Optional[float] = None
    apply_chat_template: bool = False
    log_samples: bool = False
    confirm_run_unsafe_code: bool = False
    paper_variant: Optional[str] = None
    seed: int = 42
    note: str = ""


def _check_unsafe(manager, names: Sequence[str], confirmed: bool) -> None:
    unsafe = [leaf.name for leaf in leaf_tasks(manager, names) if leaf.config.get("unsafe_code")]
    if unsafe and not confirmed:
        raise UnsafeCodeError(f"task(s) {', '.join(unsafe)} execute model-written code; pass "
                              f"--confirm-run-unsafe-code (lm_eval: --confirm_run_unsafe_code) to allow it")


def _split_samples(results: Optional[dict]) -> tuple[Optional[dict], dict]:
    if results is None:
        return None, {}
    return results, results.pop("samples", None) or {}


def run_harness(lm, req: HarnessRequest) -> Optional[dict[str, Any]]:
    """Run the request on ``lm`` (a TideBD3LM); on rank 0 a dict with the harness results, the paper
    table when the suite ran, and the per-sample logs when asked for (key ``samples``)."""
    paper = paper_suite.load_paper_results()
    if req.paper_variant:
        paper.variant(req.paper_variant)
    benches = paper_suite.selected(paper, req.suite_tasks) if req.suite else []
    shots = {b.task: b.num_fewshot for b in benches} | {t: req.num_fewshot for t in req.tasks}
    with tempfile.TemporaryDirectory(prefix="tide-eval-tasks-") as task_dir:
        manager = prepare_tasks(task_dir, shots, req.data_dir, req.include_path)
        _check_unsafe(manager, list(shots), req.confirm_run_unsafe_code)
        per_task: dict[str, dict] = {}
        samples: dict[str, Any] = {}
        for bench in benches:
            res, logged = _split_samples(paper_suite.run_benchmark(
                lm, manager, bench, limit=req.limit, log_samples=req.log_samples,
                confirm_run_unsafe_code=req.confirm_run_unsafe_code, seed=req.seed))
            if res is not None:
                per_task[bench.task] = res
                samples.update(logged)
        if req.tasks:
            from lm_eval import simple_evaluate

            res, logged = _split_samples(simple_evaluate(
                model=lm, tasks=list(req.tasks), num_fewshot=req.num_fewshot, limit=req.limit,
                apply_chat_template=req.apply_chat_template, task_manager=manager, log_samples=req.log_samples,
                confirm_run_unsafe_code=req.confirm_run_unsafe_code, random_seed=req.seed,
                numpy_random_seed=req.seed, torch_random_seed=req.seed, fewshot_random_seed=req.seed))
            if res is not None:
                per_task["lm_eval"] = res
                samples.update(logged)
    if lm.rank != 0:
        return None
    out: dict[str, Any] = {"harness": paper_suite.summary(per_task), "samples": samples}
    if req.suite:
        scores = paper_suite.suite_scores(per_task, paper)
        out["paper_scores"] = scores
        out["paper_table"] = paper_suite.format_paper_table(scores, paper, req.paper_variant, req.note)
    return out


def flat_metrics(harness: dict[str, dict]) -> dict[str, dict[str, float]]:
    """{task or group: {metric: value}} of every scalar metric in the harness results (for printing)."""
    flat: dict[str, dict[str, float]] = {}
    for res in harness.values():
        for section in ("results", "groups"):
            for name, metrics in (res.get(section) or {}).items():
                for key, value in metrics.items():
                    if isinstance(value, (int, float)) and not isinstance(value, bool) and "stderr" not in key \
                            and key != "sample_len":
                        flat.setdefault(f"lm_eval:{name}", {})[key] = float(value)
    return flat


def write_samples(directory: Path, samples: dict[str, list]) -> list[Path]:
    """One JSONL file of logged samples per task (rank 0's gathered copy), written through a temp name."""
    from lm_eval.utils import handle_non_serializable

    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for task, rows in samples.items():
        path = directory / f"{task}.jsonl"
        tmp = path.with_name(f".{path.name}.tmp")
        with open(tmp, "w", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(row, default=handle_non_serializable, ensure_ascii=False) + "\n")
        tmp.replace(path)
        paths.append(path)
    return paths

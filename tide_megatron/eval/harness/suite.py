"""The paper suite (spec §7.2, §8): the eight benchmarks with the paper's settings, and its table.

Each benchmark runs as its own harness evaluation (as the reference's eval_all.sh does), with its
few-shot count and its generation length and steps passed as generation kwargs, the chat template
applied, greedy. :func:`format_paper_table` lays our scores out like the paper's table, with the
published figures (``eval/paper_results.yaml``) of one or of every variant beside them.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import yaml

PAPER_RESULTS = Path(__file__).resolve().parent.parent / "paper_results.yaml"


@dataclass(frozen=True)
class Benchmark:
    """One column of the paper's table and how it is run (see paper_results.yaml)."""

    column: str
    task: str
    max_new_tokens: int
    steps: int
    num_fewshot: int
    metric: str
    paper: dict


@dataclass(frozen=True)
class PaperResults:
    source: str
    variants: tuple[str, ...]
    average: dict
    benchmarks: tuple[Benchmark, ...]

    def variant(self, name: str) -> str:
        """``name`` if it is one of the paper's variants; else a ValueError listing them."""
        if name not in self.variants:
            raise ValueError(f"--paper-variant {name!r}: expected one of {', '.join(self.variants)}")
        return name


def load_paper_results(path: Path = PAPER_RESULTS) -> PaperResults:
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    return PaperResults(source=raw["source"], variants=tuple(raw["variants"]), average=dict(raw["average"]),
                        benchmarks=tuple(Benchmark(**b) for b in raw["benchmarks"]))


def unsafe_tasks(manager, names: Sequence[str]) -> list[str]:
    """The leaf tasks behind ``names`` that execute model-written code (``unsafe_code: true``)."""
    from tide_megatron.eval.harness.offline import leaf_tasks

    return [leaf.name for leaf in leaf_tasks(manager, names) if leaf.config.get("unsafe_code")]


def score_of(results: dict, task: str, metric: str) -> float:
    """The ``metric`` of ``task`` (a group's aggregate for a group) from one harness results dict."""
    for section in ("groups", "results"):
        entry = (results.get(section) or {}).get(task)
        if entry and metric in entry:
            return float(entry[metric])
    have = sorted((results.get("groups") or {}).get(task) or (results.get("results") or {}).get(task) or {})
    raise KeyError(f"task {task}: no metric {metric!r} in the harness results (it reports {have})")


def run_benchmark(lm, manager, bench: Benchmark, *, limit: Optional[float] = None, log_samples: bool = False,
                  confirm_run_unsafe_code: bool = False, seed: int = 42) -> Optional[dict]:
    """One benchmark through ``lm_eval.simple_evaluate`` (None on ranks other than 0)."""
    from lm_eval import simple_evaluate

    return simple_evaluate(model=lm, tasks=[bench.task], num_fewshot=bench.num_fewshot, limit=limit,
                           gen_kwargs={"max_gen_toks": bench.max_new_tokens, "steps": bench.steps},
                           apply_chat_template=True, fewshot_as_multiturn=False, task_manager=manager,
                           log_samples=log_samples, confirm_run_unsafe_code=confirm_run_unsafe_code,
                           random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed,
                           fewshot_random_seed=seed)


def _fmt(value: Optional[float]) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.2f}"


def format_paper_table(scores: dict[str, float], paper: PaperResults, variant: Optional[str] = None,
                       note: str = "") -> str:
    """Markdown: one row per benchmark in the paper's order plus the average; ``scores`` are percents by column.

    With ``variant``, ours, the paper's figure for it and the difference; without, ours and every variant.
    """
    columns = [variant] if variant else list(paper.variants)
    head = ["Benchmark", "ours"] + [f"paper {c}" for c in columns] + (["ours - paper"] if variant else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for b in paper.benchmarks:
        ours = scores.get(b.column)
        row = [b.column, _fmt(ours)] + [_fmt(b.paper[c]) for c in columns]
        if variant:
            row.append(_fmt(None if ours is None else ours - b.paper[variant]))
        lines.append("| " + " | ".join(row) + " |")
    complete = all(b.column in scores for b in paper.benchmarks)
    avg = sum(scores[b.column] for b in paper.benchmarks) / len(paper.benchmarks) if complete else None
    row = ["**Avg**", _fmt(avg)] + [_fmt(paper.average[c]) for c in columns]
    if variant:
        row.append(_fmt(None if avg is None else avg - paper.average[variant]))
    lines.append("| " + " | ".join(row) + " |")
    if note:
        lines += ["", note]
    return "\n".join(lines)


def suite_scores(per_task: dict[str, dict], paper: PaperResults) -> dict[str, float]:
    """{column: percent} from the harness results of each benchmark that ran."""
    return {b.column: 100.0 * score_of(per_task[b.task], b.task, b.metric)
            for b in paper.benchmarks if b.task in per_task}


def selected(paper: PaperResults, names: Optional[Sequence[str]] = None) -> list[Benchmark]:
    """The benchmarks to run: all, or those whose task or column is in ``names``."""
    if not names:
        return list(paper.benchmarks)
    known = {b.task: b for b in paper.benchmarks} | {b.column: b for b in paper.benchmarks}
    bad = [n for n in names if n not in known]
    if bad:
        raise ValueError(f"--suite-tasks: unknown {bad}; expected tasks or columns of the paper suite: "
                         f"{', '.join(b.task for b in paper.benchmarks)}")
    return [b for b in paper.benchmarks if b in {known[n] for n in names}]


def summary(per_task: dict[str, dict]) -> dict[str, Any]:
    """What the results JSON keeps of each harness run (results, groups, configs, versions, sample counts)."""
    from lm_eval.utils import handle_non_serializable

    keep = ("results", "groups", "group_subtasks", "configs", "versions", "n-shot", "higher_is_better",
            "n-samples", "config")
    kept = {task: {k: v for k, v in res.items() if k in keep} for task, res in per_task.items()}
    return json.loads(json.dumps(kept, default=handle_non_serializable))  # task configs hold functions

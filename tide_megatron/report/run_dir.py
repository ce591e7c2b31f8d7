"""What a run directory holds for the report, the writer of its results.json, and the reader of all of it.

A run directory is the ``output_dir`` of one ``tide-train`` run (``slurm/ablation.sbatch`` and ``tide-ablate``
write ``<runs>/<variant>/seed<seed>``):

- ``results.json``  written by rank 0 when the run stops: ``status`` (``complete``, ``preempted`` = stopped by
  a signal with a checkpoint to resume from, ``failed`` with the ``error``), ``step`` / ``total_steps``, the
  resolved ``config``, ``metrics`` (``heldout/<term>`` from the final held-out evaluation, ``train/<term>``
  from the last logged interval; later evaluations add their own, e.g. the demo's ``heldout/bpb``) and
  ``history`` (every logged scalar as ``[step, value]`` pairs, kept across resumes);
- ``checkpoints/``  ``step_XXXXXXX/`` (with ``config.yaml`` and ``tide_checkpoint.json``) and ``latest``;
- ``tensorboard/``  the event files;
- lm-evaluation-harness results anywhere below it (``tide-eval --suite paper`` / ``lm_eval --output_path``):
  the harness's JSON (``results`` -> task -> ``metric,filter`` -> value), read as ``lm_eval/<task>/<metric,filter>``.

A run without results.json (killed, out of time) is *incomplete*; the report lists it, never averages it.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence

import yaml

from tide_megatron.eval.report import write_json_atomic

RESULTS_FILE = "results.json"
FORMAT = "tide-run-results"
FORMAT_VERSION = 1
STATUSES = ("complete", "preempted", "failed")
SEED_DIR = re.compile(r"^seed(-?\d+)$")
_NOT_RUN_PARTS = ("checkpoints", "tensorboard")  # never a run directory, never holds lm-eval results


# ---------------------------------------------------------------------------------------------------------
# writing (rank 0 of tide-train, and the demo)
# ---------------------------------------------------------------------------------------------------------

def _final_metrics(history: Mapping[str, Sequence], step: int) -> dict[str, float]:
    """``heldout/x`` from ``eval/x`` logged at ``step`` (the final evaluation), ``train/x`` from the last ``loss/x``."""
    out: dict[str, float] = {}
    for key, points in history.items():
        if not points:
            continue
        last_step, value = points[-1]
        if key.startswith("eval/") and int(last_step) == step:
            out["heldout/" + key[5:]] = float(value)
        elif key.startswith("loss/"):
            out["train/" + key[5:]] = float(value)
    return out


def _merged_history(previous: Optional[dict], history: Mapping[str, Sequence]) -> dict[str, list]:
    """This session's history after the points of an earlier (preempted) session that precede it."""
    merged: dict[str, list] = {}
    old = (previous or {}).get("history") or {}
    for key in sorted(set(old) | set(history)):
        new = [[int(s), float(v)] for s, v in history.get(key, [])]
        first = new[0][0] if new else math.inf
        merged[key] = [[int(s), float(v)] for s, v in old.get(key, []) if s < first] + new
    return merged


def write_run_results(output_dir: str, config: dict, status: str, step: int, total_steps: int,
                      history: Mapping[str, Sequence], summary: Optional[dict] = None,
                      error: Optional[str] = None) -> Optional[Path]:
    """Write ``<output_dir>/results.json`` atomically; returns its path (call it on one rank only).

    ``history`` maps scalar names to ``(step, value)`` points (the trainer's `MetricsLogger.history`); the
    points of an earlier preempted session of the same run are kept in front of this session's.
    """
    if status not in STATUSES:
        raise ValueError(f"run status: expected one of {', '.join(STATUSES)}, got {status!r}")
    path = Path(output_dir) / RESULTS_FILE
    previous = _read_json(path) if path.is_file() else None
    if previous is not None and previous.get("format") != FORMAT:
        previous = None
    merged = _merged_history(previous, history)
    payload = {
        "format": FORMAT, "version": FORMAT_VERSION, "status": status, "error": error,
        "step": int(step), "total_steps": int(total_steps),
        "seed": config.get("optim", {}).get("seed"), "name": config.get("name"),
        "mode": config.get("objective", {}).get("mode"),
        "metrics": _final_metrics(merged, int(step)) if status == "complete" else {},
        "summary": {k: float(v) for k, v in (summary or {}).items() if isinstance(v, (int, float))},
        "history": merged, "config": config,
        "written_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(str(path), payload)
    return path


def write_trainer_results(trainer, status: str, summary: Optional[dict] = None,
                          error: Optional[BaseException] = None) -> Optional[Path]:
    """`write_run_results` for a `DistillTrainer` on the rank that writes its logs (global rank 0); None elsewhere."""
    if not trainer.logger.is_writer:
        return None
    # local: tide_megatron.config imports megatron-core (seconds), which tide-report itself never needs
    from tide_megatron.config import dump_config

    cfg = trainer.cfg
    return write_run_results(cfg.output_dir, yaml.safe_load(dump_config(cfg)), status, trainer.state.step, trainer.state.total_steps,
                             trainer.logger.history, summary,
                             None if error is None else f"{type(error).__name__}: {error}")


def run_recorded(trainer) -> dict:
    """``trainer.run()``, leaving results.json behind however it ends (complete, preempted, or failed and re-raised)."""
    try:
        summary = trainer.run()
    except BaseException as err:
        write_trainer_results(trainer, "failed", error=err)
        raise
    write_trainer_results(trainer, "preempted" if summary.get("preempted") else "complete", summary)
    return summary


def add_run_metrics(run_dir: str, metrics: Mapping[str, float]) -> None:
    """Add metrics measured after training (e.g. held-out bits per byte of the export) to results.json."""
    path = Path(run_dir) / RESULTS_FILE
    data = _read_json(path)
    if data is None or data.get("format") != FORMAT:
        raise ValueError(f"{path}: not a tide-train results file; cannot add metrics {sorted(metrics)}")
    data["metrics"].update({k: float(v) for k, v in metrics.items()})
    write_json_atomic(str(path), data)


# ---------------------------------------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------------------------------------

@dataclass
class RunRecord:
    """One run directory as the report sees it."""

    path: Path
    variant: str
    seed: Optional[int]
    status: str  # complete | preempted | failed | incomplete | unreadable
    reason: str = ""
    step: Optional[int] = None
    total_steps: Optional[int] = None
    metrics: dict[str, float] = field(default_factory=dict)
    history: dict[str, list] = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return self.status == "complete"

    def describe(self) -> str:
        return f"{self.variant} seed {self.seed} ({self.path})"


def _read_json(path: Path) -> Optional[Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def is_run_dir(path: Path) -> bool:
    """A tide-train output directory: results.json, checkpoints/ or a ``seed<N>`` name."""
    return path.is_dir() and ((path / RESULTS_FILE).is_file() or (path / "checkpoints").is_dir()
                              or bool(SEED_DIR.match(path.name)))


def discover_run_dirs(paths: Iterable[str]) -> list[Path]:
    """Every run directory at or below each path (sorted, each once); a path with none is an error."""
    found: list[Path] = []
    for raw in paths:
        root = Path(raw).expanduser()
        if not root.is_dir():
            raise ValueError(f"RUN_DIR {raw}: no such directory")
        runs = [root] if is_run_dir(root) else _walk(root)
        if not runs:
            raise ValueError(f"RUN_DIR {raw}: no run directory in it (expected results.json, checkpoints/ or "
                             f"seed<N>/ directories, as tide-train, tide-ablate and slurm/ablation.sbatch write)")
        found += runs
    unique = {p.resolve(): p for p in found}
    return sorted(unique.values())


def _walk(root: Path) -> list[Path]:
    out = []
    for child in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if child.name in _NOT_RUN_PARTS:
            continue
        out += [child] if is_run_dir(child) else _walk(child)
    return out


def _checkpoint_progress(run: Path) -> tuple[Optional[int], Optional[int], dict]:
    """(step, total steps, config) of the newest complete checkpoint, or Nones."""
    root = run / "checkpoints"
    latest = root / "latest"
    name = latest.read_text().strip() if latest.is_file() else None
    if not name:
        return None, None, {}
    marker = _read_json(root / name / "tide_checkpoint.json") or {}
    try:
        config = yaml.safe_load((root / name / "config.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        config = {}
    return marker.get("step"), marker.get("total_steps"), config if isinstance(config, dict) else {}


def read_run(path: Path) -> RunRecord:
    """The record of one run directory: its status, metrics, history, config, variant and seed."""
    path = Path(path)
    match = SEED_DIR.match(path.name)
    dir_seed = int(match.group(1)) if match else None
    results = path / RESULTS_FILE
    data = _read_json(results) if results.is_file() else None
    if results.is_file() and (not isinstance(data, dict) or data.get("format") != FORMAT):
        rec = RunRecord(path, _variant(path, {}, match), dir_seed, "unreadable",
                        f"{RESULTS_FILE} is not valid tide-train results JSON")
        return rec
    if data is None:
        step, total, config = _checkpoint_progress(path)
        progress = f"last checkpoint at step {step} of {total}" if step is not None else "no checkpoint"
        seed = config.get("optim", {}).get("seed", dir_seed)
        return RunRecord(path, _variant(path, config, match), seed, "incomplete",
                         f"no {RESULTS_FILE} (the run never finished: killed, out of time, or still running; "
                         f"{progress})", step, total, config=config)
    config = data.get("config") or {}
    seed = data.get("seed", dir_seed)
    rec = RunRecord(path, _variant(path, config, match), seed, data["status"], step=data.get("step"),
                    total_steps=data.get("total_steps"), metrics=dict(data.get("metrics") or {}),
                    history=dict(data.get("history") or {}), config=config)
    if rec.status == "failed":
        rec.reason = f"failed at step {rec.step} of {rec.total_steps}: {data.get('error')}"
    elif rec.status == "preempted":
        rec.reason = f"stopped by a signal at step {rec.step} of {rec.total_steps} (resume it to finish)"
    elif rec.step is not None and rec.total_steps is not None and rec.step < rec.total_steps:
        rec.status, rec.reason = "incomplete", f"stopped at step {rec.step} of {rec.total_steps}"
    if dir_seed is not None and seed is not None and dir_seed != seed:
        rec.notes.append(f"directory name says seed {dir_seed} but the run's optim.seed is {seed}; "
                         f"using {seed}")
    rec.metrics.update(read_lm_eval_metrics(path))
    return rec


def _variant(path: Path, config: dict, seed_match) -> str:
    """``<variant>/seed<N>`` -> the parent's name; otherwise the config's ``name`` (else the directory's)."""
    if seed_match:
        return path.parent.name
    return str(config.get("name") or path.name)


def read_lm_eval_metrics(run: Path) -> dict[str, float]:
    """``lm_eval/<task>/<metric,filter>`` from every harness results JSON below ``run`` (newest file wins)."""
    files = []
    for p in run.rglob("*.json"):
        rel = p.relative_to(run).parts
        if p.name == RESULTS_FILE and len(rel) == 1 or any(part in _NOT_RUN_PARTS for part in rel):
            continue
        data = _read_json(p)
        if _is_lm_eval_results(data):
            files.append((p.stat().st_mtime, str(p), data))
    out: dict[str, float] = {}
    for _, _, data in sorted(files):
        for task, metrics in data["results"].items():
            for key, value in metrics.items():
                if key == "alias" or "_stderr" in key.split(",")[0] or isinstance(value, bool):
                    continue
                if isinstance(value, (int, float)) and math.isfinite(value):
                    out[f"lm_eval/{task}/{key}"] = float(value)
    return out


def _is_lm_eval_results(data: Any) -> bool:
    """The harness's results JSON: ``results`` of per-task dicts, beside its ``configs`` / ``versions``."""
    return (isinstance(data, dict) and isinstance(data.get("results"), dict)
            and all(isinstance(v, dict) for v in data["results"].values())
            and any(k in data for k in ("configs", "versions", "n-shot", "config")))


def read_runs(paths: Iterable[str]) -> list[RunRecord]:
    """Discover and read every run below ``paths``; two runs of one variant and seed are an error."""
    records = [read_run(p) for p in discover_run_dirs(paths)]
    seen: dict[tuple, RunRecord] = {}
    for rec in records:
        if rec.seed is None:
            continue
        key = (rec.variant, rec.seed)
        if key in seen:
            raise ValueError(f"two runs of variant {rec.variant!r} seed {rec.seed}: {seen[key].path} and {rec.path}; "
                             f"pass only one of them")
        seen[key] = rec
    return records

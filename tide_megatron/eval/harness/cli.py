"""``tide-lm-eval``: lm-evaluation-harness's own command line, with ``tide_bd3lm`` and our tasks added.

    tide-lm-eval --model tide_bd3lm --model_args pretrained=DIR --tasks gsm8k_cot --apply_chat_template \\
        [--data-dir LOCAL_DATASETS] [any other lm_eval flag]

Every flag is the harness's (``lm_eval --help``) except ``--data-dir``: local copies of the datasets
(layout in ``eval/harness/offline.py`` and docs/EVALUATION.md). Released harness versions up to 0.4.13
resolve ``--model`` only against their built-in registry, so the stock ``lm_eval`` command cannot find
an outside model; this command imports ``tide_bd3lm`` (its ``register_model``) and passes our task
directory as ``--include_path`` before handing over. The package also declares both as the harness's
``lm_eval.models`` / ``lm_eval.tasks`` entry points, which later harness releases discover on their own.
"""

from __future__ import annotations

import sys
import tempfile
from typing import Optional, Sequence

from tide_megatron.cli.errors import cli_errors


def _pop_option(argv: list[str], flag: str) -> Optional[str]:
    """Remove ``flag VALUE`` or ``flag=VALUE`` from ``argv``; return VALUE (None when absent)."""
    for i, arg in enumerate(argv):
        if arg == flag:
            if i + 1 >= len(argv):
                raise SystemExit(f"tide-lm-eval: {flag} needs a value")
            value = argv[i + 1]
            del argv[i:i + 2]
            return value
        if arg.startswith(flag + "="):
            del argv[i]
            return arg.split("=", 1)[1]
    return None


def _option(argv: Sequence[str], flag: str) -> Optional[str]:
    probe = list(argv)
    return _pop_option(probe, flag)


@cli_errors("tide-lm-eval")
def main(argv: Optional[Sequence[str]] = None) -> int:
    from lm_eval.__main__ import cli_evaluate

    import tide_megatron.eval.harness.model  # noqa: F401  (register_model("tide_bd3lm") runs on import)
    from tide_megatron.eval.harness.offline import (OfflineDataError, UnknownTaskError, point_at_local_data,
                                                    task_manager, write_wrappers)

    args = list(sys.argv[1:] if argv is None else argv)
    data_dir = _pop_option(args, "--data-dir")
    include = _pop_option(args, "--include_path")
    tasks = [t for t in (_option(args, "--tasks") or "").split(",") if t and not t.endswith(".yaml")]
    shots = _option(args, "--num_fewshot")
    with tempfile.TemporaryDirectory(prefix="tide-lm-eval-tasks-") as task_dir:
        try:
            write_wrappers(task_dir, include)
            if data_dir is not None:  # finding the leaf tasks needs the index; the harness indexes again
                shots_n = None if shots is None else int(shots)
                point_at_local_data(task_manager(task_dir), task_dir, {t: shots_n for t in tasks}, data_dir)
        except (OfflineDataError, UnknownTaskError, FileNotFoundError) as err:
            print(f"tide-lm-eval: error: {err}", file=sys.stderr)
            return 2
        sys.argv = ["tide-lm-eval", *args, "--include_path", task_dir]  # run, ls and validate all take it
        cli_evaluate()
    return 0


if __name__ == "__main__":
    sys.exit(main())

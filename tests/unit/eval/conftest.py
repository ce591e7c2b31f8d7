"""Shared, session-wide pieces of the lm-evaluation-harness tests (indexing the harness's tasks takes seconds)."""

import pytest

PAPER_TASKS = ["gsm8k_cot", "minerva_math", "bbh", "mmlu_pro", "hellaswag_gen", "mmlu_generative_dream",
               "humaneval_instruct", "mbpp_instruct"]


@pytest.fixture(scope="session")
def harness_student(tmp_path_factory):
    """A tiny random Qwen3 student (HF export) with a trained byte-level BPE tokenizer."""
    pytest.importorskip("lm_eval")
    from tests.helpers.harness import make_student

    return make_student(tmp_path_factory.mktemp("harness_student"))


@pytest.fixture(scope="session")
def harness_env(tmp_path_factory):
    """One TaskManager for the session (our tasks; every paper task, 0-shot and bbh 3-shot, and the
    harness's own loglikelihood `hellaswag` pointed at local copies of 3 rows), the data directory and
    the paper tasks' leaves."""
    pytest.importorskip("lm_eval")
    from tests.helpers.harness import write_local_datasets
    from tide_megatron.eval.harness.offline import leaf_tasks, point_at_local_data, task_manager, write_wrappers

    root = tmp_path_factory.mktemp("harness_env")
    task_dir = write_wrappers(root / "tasks")
    manager = task_manager(str(task_dir))
    leaves = leaf_tasks(manager, PAPER_TASKS)
    data = write_local_datasets(root / "data", leaves, rows=3)
    shots = {t: (3 if t == "bbh" else 0) for t in PAPER_TASKS} | {"hellaswag": 0}
    point_at_local_data(manager, task_dir, shots, str(data))
    return manager, data, leaves


@pytest.fixture(scope="session")
def offline_manager(harness_env):
    return harness_env[0]

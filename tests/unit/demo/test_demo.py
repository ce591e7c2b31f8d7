"""tide-demo end to end with a handful of steps (a subprocess, like a user's run): every output exists, the
numbers are finite, each seed's two students started from the same init and saw the same noise, the result
statement follows the paired interval, the output carries no third-party warning, and bad flags fail with
one clear line and no output directory."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tide_megatron.fixtures.artifacts import cache_dir

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[3]


def _env(cache: Path) -> dict:
    """A fresh demo cache that reuses the already fetched tokenizer files (fetching is tested in align/)."""
    cache.mkdir(parents=True, exist_ok=True)
    for name in ("gguf-vocabs", "sentencepiece", "tokenizers"):
        if (cache_dir() / name).is_dir() and not (cache / name).exists():
            (cache / name).symlink_to(cache_dir() / name)
    # a world of one of its own: not the launcher variables an earlier in-process test may have set
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                            "MASTER_PORT")}
    return {**env, "TIDE_CACHE_DIR": str(cache), "TORCHDYNAMO_DISABLE": "1", "OMP_NUM_THREADS": "1",
            "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def _demo(args, env, timeout=240):
    return subprocess.run([sys.executable, "-m", "tide_megatron.cli.demo", *args], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


def test_quick_demo_writes_every_output(tmp_path):
    out = tmp_path / "demo"
    proc = _demo(["--quick", "--output-dir", str(out)], _env(tmp_path / "cache"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "| student (Qwen3 BD3LM, Mistral SPM) | TIDE-Cross (Reverse CALM) |" in proc.stdout
    assert "Warning" not in proc.stdout + proc.stderr  # known third-party warnings are filtered, none is new
    results = json.loads((out / "results.json").read_text())
    assert (out / "results.md").read_text().startswith("| model |")
    for png in ("teacher_loss.png", "report/loss_curves.png", "report/metrics.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
    assert list((out / "tensorboard" / "teacher").glob("events.out.tfevents.*"))
    seeds = results["settings"]["seeds"]
    assert seeds == [0, 1]
    for name in ("tide_cross", "ce_only"):
        for seed in seeds:
            run_dir = out / "runs" / name / f"seed{seed}"
            res = json.loads((run_dir / "results.json").read_text())  # a tide-train run directory
            assert res["status"] == "complete" and res["seed"] == seed
            assert all(math.isfinite(res["metrics"][k]) and res["metrics"][k] > 0
                       for k in ("heldout/bpb", "heldout/masked_bpb", "heldout/ce"))
            assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
            r = results["students"][name][str(seed)]
            assert r["bpb"]["elbo_bpb"] == res["metrics"]["heldout/bpb"]
            assert Path(r["hf_dir"], "config.json").is_file()  # paths name the final directory
    runs = {(n, s): json.loads((out / "runs" / n / f"seed{s}" / "results.json").read_text())["history"]
            for n in ("tide_cross", "ce_only") for s in seeds}
    # one seed = one init, data order and noise for both students: the first step's CE agrees; seeds differ
    for s in seeds:
        assert runs["tide_cross", s]["loss/ce"][0] == runs["ce_only", s]["loss/ce"][0]
        assert runs["tide_cross", s]["loss/total"][0][1] > runs["tide_cross", s]["loss/ce"][0][1]
    assert runs["ce_only", 0]["loss/ce"][0] != runs["ce_only", 1]["loss/ce"][0]
    # the statement follows the paired interval of tide-report's library
    paired = results["paired_bpb"]
    report = json.loads((out / "report" / "report.json").read_text())
    entry = next(p for p in report["paired"] if p["variant"] == "tide_cross" and p["metric"] == "heldout/bpb")
    assert entry["estimate"] == paired and entry["seeds"] == seeds
    expected = ("no significant difference at this scale" if not paired["excludes_zero"] else
                "lower held-out bits/byte" if paired["mean"] < 0 else "higher held-out bits/byte")
    assert expected in results["statement"] and results["statement"] in (out / "results.md").read_text()
    assert all(math.isfinite(v) for _, v in results["teacher"]["losses"])
    assert math.isfinite(results["teacher"]["bpb"]["elbo_bpb"]) and results["teacher"]["bpb"]["windows"] > 0
    assert set(results["phase_seconds"]) >= {"tokenizers", "preprocess", "teacher", "train tide_cross",
                                             "train ce_only", "evaluate ce_only", "report"}
    assert not [p for p in tmp_path.iterdir() if ".partial-" in p.name]


def test_the_statement_follows_the_interval():
    from tide_megatron.demo.pipeline import result_statement
    from tide_megatron.demo.settings import DemoSettings
    from tide_megatron.report.build import build_report
    from tide_megatron.report.run_dir import RunRecord

    def report(diffs):
        runs = []
        for seed, d in enumerate(diffs):
            for name, value in (("tide_cross", 2.0 + d), ("ce_only", 2.0)):
                runs.append(RunRecord(Path(name, f"seed{seed}"), name, seed, "complete",
                                      metrics={"heldout/bpb": value}))
        return build_report(runs, baseline="ce_only")

    s = DemoSettings()
    assert "no significant difference at this scale" in result_statement(report([-0.02, 0.01, 0.005]), s, 10)
    assert "TIDE-Cross has lower held-out bits/byte" in result_statement(report([-0.02, -0.021, -0.019]), s, 10)
    assert "TIDE-Cross has higher held-out bits/byte" in result_statement(report([0.02, 0.021, 0.019]), s, 10)
    assert "no conclusion" in result_statement(report([-0.02]), s, 10)


def test_bad_flags_fail_cleanly(tmp_path):
    env = _env(tmp_path / "cache")
    proc = _demo(["--quick", "--steps", "0", "--output-dir", str(tmp_path / "o")], env, timeout=60)
    assert proc.returncode == 2 and "--steps: expected an integer >= 1" in proc.stderr
    assert not (tmp_path / "o").exists()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    proc = _demo(["--quick", "--output-dir", str(tmp_path / "mine")], env, timeout=60)
    assert proc.returncode == 2 and "not a tide-demo output" in proc.stderr
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"

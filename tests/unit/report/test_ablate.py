"""tide-ablate end to end on the tiny CPU config (examples/tiny/, artifacts from tools/make_tiny_distill.py):
2 variants x 2 seeds through the real tide-train, each in <out>/<variant>/seed<S>, then tide-report over them
writes the table and both plots; a rerun skips the complete runs. Bad flags fail before any training."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tide_megatron.cli import ablate
from tide_megatron.fixtures.artifacts import cache_dir

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[3]
CONFIG = "examples/tiny/tiny_pipeline_a_tide_cross.yaml"
PNG = b"\x89PNG\r\n\x1a\n"


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                            "MASTER_PORT")}
    return {**env, "TIDE_CACHE_DIR": str(cache_dir()), "TORCHDYNAMO_DISABLE": "1", "OMP_NUM_THREADS": "1",
            "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}


@pytest.fixture(scope="module")
def tiny_artifacts(real_artifacts):
    proc = subprocess.run([sys.executable, "tools/make_tiny_distill.py"], cwd=REPO, env=_env(), capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]


def _ablate(out: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "tide_megatron.cli.ablate", "--output-dir", str(out), "--seeds", "1", "2",
           "--variant", "tide_cross", CONFIG, "--variant", "ce_only", CONFIG, "objective.mode=ce",
           "--set", "teacher.ep=1", "optim.train_steps=3", "logging.log_interval=1", "data.num_workers=0",
           "checkpoint.save_interval=1000", "--baseline", "ce_only", *extra]
    return subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=900)


def test_two_variants_by_two_seeds_then_the_report(tiny_artifacts, tmp_path):
    out = tmp_path / "ablation"
    proc = _ablate(out)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    runs = {}
    for variant in ("tide_cross", "ce_only"):
        for seed in (1, 2):
            res = json.loads((out / variant / f"seed{seed}" / "results.json").read_text())
            assert res["status"] == "complete" and res["seed"] == seed and res["step"] == 3
            assert res["config"]["objective"]["mode"] == ("reverse_alm" if variant == "tide_cross" else "ce")
            runs[variant, seed] = res
    ce = {k: [v for _, v in r["history"]["loss/ce"]] for k, r in runs.items()}
    # one seed = one init, data order and noise for both variants: their first CE agrees; the seeds differ
    assert ce["tide_cross", 1][0] == ce["ce_only", 1][0] and ce["tide_cross", 2][0] == ce["ce_only", 2][0]
    assert ce["tide_cross", 1] != ce["tide_cross", 2]

    md = (out / "report" / "report.md").read_text()
    assert "| heldout/ce | ce_only | 2 | 1, 2 |" in md and "| heldout/ce | tide_cross | 2 | 1, 2 |" in md
    assert "| heldout/ce | tide_cross | 2 |" in md.split("## Paired differences against ce_only")[1]
    assert "None: every run is complete." in md
    for png in ("loss_curves.png", "metrics.png"):
        assert (out / "report" / png).read_bytes()[:8] == PNG
    assert "heldout/ce: tide_cross - ce_only" in proc.stdout

    again = _ablate(out)  # every run is complete: nothing trains again
    assert again.returncode == 0 and again.stdout.count("skipped") == 4, again.stdout[-2000:]


def test_bad_flags_fail_before_training(tmp_path, capsys):
    out = tmp_path / "o"
    cases = [
        (["--seeds", "1", "x", "--config", CONFIG], "--seeds: expected integers, got 'x'"),
        (["--seeds", "1", "1", "--config", CONFIG], "seed 1 is given twice"),
        (["--seeds", "1"], "expected at least one --config"),
        (["--seeds", "1", "--config", CONFIG, "--baseline", "nope"], "--baseline 'nope': not one of the variants"),
        (["--seeds", "1", "--variant", "v", CONFIG, "notanoverride"], "expected KEY=VALUE overrides"),
        (["--seeds", "1", "--config", "missing.yaml"], "missing.yaml"),
    ]
    for argv, message in cases:
        assert ablate.main(["--output-dir", str(out), *argv]) == 2, argv
        assert message in capsys.readouterr().err, argv
    assert not out.exists()

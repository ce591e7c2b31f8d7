"""tide-demo end to end with a handful of steps (a subprocess, like a user's run): every output exists, the
numbers are finite, both students started from the same init and saw the same noise, and bad flags fail
with one clear line and no output directory."""

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
    results = json.loads((out / "results.json").read_text())
    assert (out / "results.md").read_text().startswith("| model |")
    assert (out / "loss_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for run in ("teacher", "tide_cross", "ce_only"):
        assert list((out / "tensorboard" / run).glob("events.out.tfevents.*")), run
    runs = results["students"]
    for name in ("tide_cross", "ce_only"):
        bpb = runs[name]["bpb"]
        assert all(math.isfinite(bpb[k]) and bpb[k] > 0 for k in ("elbo_bpb", "masked_bpb"))
        assert runs[name]["parameters"] > 0 and math.isfinite(runs[name]["summary"]["tokens_per_s"])
        assert Path(runs[name]["hf_dir"], "config.json").is_file()  # paths name the final directory
    # same student init, data and noise: the first step's CE is identical; only the teacher term differs
    assert runs["tide_cross"]["history"]["loss/ce"][0] == runs["ce_only"]["history"]["loss/ce"][0]
    assert runs["tide_cross"]["history"]["loss/total"][0][1] > runs["tide_cross"]["history"]["loss/ce"][0][1]
    assert all(math.isfinite(v) for _, v in results["teacher"]["losses"])
    assert math.isfinite(results["teacher"]["bpb"]["elbo_bpb"]) and results["teacher"]["bpb"]["windows"] > 0
    assert set(results["phase_seconds"]) >= {"tokenizers", "preprocess", "teacher", "train tide_cross",
                                             "train ce_only", "evaluate ce_only"}
    assert not [p for p in tmp_path.iterdir() if ".partial-" in p.name]


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

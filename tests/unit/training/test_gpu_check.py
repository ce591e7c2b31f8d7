"""benchmarks/gpu_check.py without a GPU: the tide-train commands it runs, the metrics it reads, the FLOPs it counts.

The commands are checked against the real config loader (they must be valid tide-train invocations of the tiny
configs, bf16, with FP8 for the student in one run), the metrics parser against what the trainer's own
`MetricsLogger` writes, and the parameter counts against transformers' Qwen3 and the LLaDA2 reference model.
"""

import json
import math
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers.benchmarks import load_benchmark
from tide_megatron.config import load_config, paths_unchecked
from tide_megatron.training.logging import MetricsLogger

REPO = Path(__file__).resolve().parents[3]


def _gpu_check():
    return load_benchmark("gpu_check")


@pytest.fixture(scope="module")
def gpu_check():
    return _gpu_check()


def _plan(gpu_check, capsys, *argv) -> dict:
    assert gpu_check.main(["--dry-run", *argv]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("nproc", [1, 2])
def test_dry_run_runs_tide_train_under_torchrun_on_both_tiny_pipelines(gpu_check, capsys, tmp_path, nproc):
    plan = _plan(gpu_check, capsys, "--nproc", str(nproc), "--work", str(tmp_path), "--steps", "7")
    runs = {r["name"]: r for r in plan["train"]}
    assert list(runs) == ["a_bf16", "b_bf16", "b_fp8"]
    for name, run in runs.items():
        argv = run["argv"]
        assert argv[:8] == [sys.executable, "-m", "torch.distributed.run", "--standalone",
                            f"--nproc_per_node={nproc}", "-m", "tide_megatron.cli.train", "--config"]
        config = Path(argv[8])
        assert config.parent == REPO / "examples" / "tiny" and config.name.startswith(f"tiny_pipeline_{name[0]}_")
        with paths_unchecked():  # the real loader: every override is a valid field with a valid value
            cfg = load_config(str(config), argv[9:])
        assert cfg.precision.dtype == "bf16" and cfg.teacher.dtype == "bf16"
        assert cfg.precision.fp8 == (name == "b_fp8")
        assert cfg.optim.train_steps == 7 and cfg.logging.log_interval == 1 and cfg.checkpoint.resume == "none"
        assert cfg.data.valid == "" and not cfg.checkpoint.save_at_end
        assert cfg.logging.dir == str(tmp_path / name / "logs") == run["log_dir"]
        assert max(cfg.teacher.layout.tp, cfg.teacher.layout.ep) == nproc  # the teacher shards over the run's ranks
        cfg.check_world_size(nproc)
    assert plan["parity"]["argv"][2:4] == ["--part", "parity"] and plan["parity"]["argv"][-2:] == ["local", "te"]
    assert plan["attention"]["argv"][1].endswith("benchmarks/attention.py")
    assert plan["attention"]["argv"][-2:] == ["512", "1024"]


def test_smoke_plan_is_the_cpu_rehearsal(gpu_check, capsys, tmp_path):
    plan = _plan(gpu_check, capsys, "--smoke", "--work", str(tmp_path))
    assert [r["name"] for r in plan["train"]] == ["a_fp32", "b_fp32"]
    assert plan["parity"]["argv"][-3:] == ["--parity-backends", "local", "local_fused"]
    assert all(r["env"] == {"TIDE_BACKEND": "local"} for r in plan["train"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_refuses_clearly_without_cuda(gpu_check, capsys, tmp_path):
    assert gpu_check.main(["--out", str(tmp_path / "r.json")]) == 2
    err = capsys.readouterr().err
    assert "no CUDA device is visible" in err and "--dry-run" in err and "--smoke" in err
    assert not (tmp_path / "r.json").exists()


def test_reads_what_the_trainers_logger_writes(gpu_check, tmp_path):
    log = MetricsLogger(str(tmp_path), log_interval=1, tensorboard=False, stream=open("/dev/null", "w"),
                        total_steps=5)
    for step in range(1, 6):
        log.record(step, {"loss/total": 3.0 - 0.1 * step, "loss/ce": 2.0, "time/teacher_s": 0.1 * step,
                          "time/student_s": 0.2 * step, "tokens": 512, "teacher_tokens": 2048, "lr": 1e-3,
                          "tokens_per_s": 1.0})
    log.summary(5)
    log.close()
    got = gpu_check.read_metrics(str(tmp_path), warmup=2)  # steps 3, 4, 5 are measured
    assert got["steps"] == 5 and got["measured_steps"] == 3
    assert got["teacher_s"] == pytest.approx(0.4) and got["student_s"] == pytest.approx(0.8)
    assert got["tokens_per_s"] == pytest.approx(512 / 1.2)
    assert got["teacher_tokens_per_step"] == 2048 and got["finite"]
    assert got["first_loss"] == pytest.approx(2.9) and got["last_loss"] == pytest.approx(2.5)
    assert got["summary"]["final_step"] == 5.0
    with pytest.raises(ValueError, match="no metrics file"):
        gpu_check.read_metrics(str(tmp_path / "missing"), warmup=0)


def test_parameter_counts_match_the_reference_models(gpu_check):
    """Non-embedding parameters of Qwen3 (transformers) and LLaDA2 (the reference model), norms aside; the active
    count of an MoE layer holds the top-k routed experts only."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from tests.reference.llada2_reference import LLaDA2MoeConfig, LLaDA2MoeModelLM

    qcfg = dict(vocab_size=96, hidden_size=32, intermediate_size=80, num_hidden_layers=3, num_attention_heads=4,
                num_key_value_heads=2, head_dim=12)
    model = Qwen3ForCausalLM(Qwen3Config(**qcfg, tie_word_embeddings=True))
    linear = sum(p.numel() for n, p in model.model.layers.named_parameters() if p.dim() == 2)
    counted = gpu_check.model_params(qcfg)
    assert counted["non_embedding"] == counted["active"] == linear

    lcfg = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4,
                num_key_value_heads=2, head_dim=8, num_experts=4, num_shared_experts=1, num_experts_per_tok=2,
                moe_intermediate_size=16, first_k_dense_replace=1, n_group=2, topk_group=1)
    ref = LLaDA2MoeModelLM(LLaDA2MoeConfig(**lcfg))
    layers = [l for n, l in ref.named_modules() if n.endswith("layers")][0]
    total = sum(p.numel() for n, p in layers.named_parameters() if p.dim() == 2)
    counted = gpu_check.model_params(lcfg)
    assert counted["non_embedding"] == total
    per_expert = 3 * 32 * 16
    assert counted["non_embedding"] - counted["active"] == 2 * (4 - 2) * per_expert  # 2 MoE layers, 2 experts idle


def test_mfu_is_flops_over_time_and_peak(gpu_check):
    sizes = {"non_embedding": 1000, "active": 600, "hidden": 8, "vocab": 50}
    run = {"tokens_per_step": 100, "teacher_tokens_per_step": 300, "student_s": 2.0, "teacher_s": 0.5}
    got = gpu_check.mfu(run, sizes, sizes, gpus=2, peak=1.0, fp8=False)
    assert got["student_step_flops"] == 6 * 1000 * 200 + 6 * 8 * 50 * 100
    assert got["teacher_forward_flops"] == 2 * 600 * 300
    assert got["student_mfu"] == pytest.approx(got["student_step_flops"] / 2.0 / 2e12)
    assert gpu_check.mfu(run, sizes, sizes, 2, 1.0, fp8=True)["student_mfu"] == pytest.approx(got["student_mfu"] / 2)
    assert math.isnan(gpu_check.peak_tflops("Some GPU")) and gpu_check.peak_tflops("NVIDIA H200") == 989.0


def test_parity_worker_compares_two_backends_on_every_model(gpu_check, tmp_path):
    """The parity part's own code on CPU: the local spec against local_fused (the local parts with TE's norm
    fusion, a different layer layout on the same weights): student, WeDLM layout and LLaDA2 agree to fp32."""
    from tests.helpers import tiny_distill as td

    td.write_student(tmp_path / "student")
    td.write_dense_teacher(tmp_path / "teacher_b")
    td.write_moe_teacher(tmp_path / "teacher_a")
    got = gpu_check.parity_worker(tmp_path, seq=32, block=16, backends=("local", "local_fused"))
    assert set(got) == {"student", "wedlm", "llada2"}
    for name, r in got.items():
        assert r["relative"] < 1e-5 and r["max_abs_logit"] > 0, (name, r)
    assert got["student"]["shape"][1] == got["wedlm"]["shape"][1] == 64 and got["llada2"]["shape"][1] == 32

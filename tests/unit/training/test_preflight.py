"""tide-train's start-up checks (training/machine_check.py, training/preflight.py, training/fp8.py): each bad
machine, install, FP8 or layout is one clear error naming the variable or field, before any model is built."""

import pytest

from tests.reference.llada2_checkpoint import write_tiny_llada2
from tide_megatron.config import ConfigError, PrecisionConfig, load_config
from tide_megatron.models.moe_kernels import MoEKernels
from tide_megatron.models.qwen3.tiny import save_tiny_qwen3
from tide_megatron.models.transformer_engine import TEStatus, TransformerEngineError, check_transformer_engine_install
from tide_megatron.training.fp8 import check_fp8_available
from tide_megatron.training.machine_check import StartupError, check_gpus_visible, gpus_given
from tide_megatron.training.preflight import check_collectives, check_layouts, teacher_moe_kernels


@pytest.mark.parametrize("env, given", [
    ({}, None),
    ({"CUDA_VISIBLE_DEVICES": ""}, None),
    ({"CUDA_VISIBLE_DEVICES": "-1", "SLURM_GPUS_ON_NODE": "0"}, None),
    ({"SLURM_JOB_GPUS": "0,1,2,3"}, ("SLURM_JOB_GPUS", "0,1,2,3")),
    ({"SLURM_GPUS_PER_NODE": "gpu:a100:8"}, ("SLURM_GPUS_PER_NODE", "gpu:a100:8")),
    ({"SLURM_GPUS": "a100:2,v100:1"}, ("SLURM_GPUS", "a100:2,v100:1")),
    ({"CUDA_VISIBLE_DEVICES": "0"}, ("CUDA_VISIBLE_DEVICES", "0")),
    ({"CUDA_VISIBLE_DEVICES": "GPU-6b7c9d"}, ("CUDA_VISIBLE_DEVICES", "GPU-6b7c9d")),
])
def test_gpus_given_reads_slurm_and_cuda_variables(env, given):
    assert gpus_given(env) == given


def test_a_job_given_gpus_but_a_cpu_torch_refuses_to_start():
    with pytest.raises(StartupError, match=r"SLURM_JOB_GPUS=0,1 gives this job GPUs, but this torch .* is a "
                                           r"CPU-only build.*TIDE_TORCH=cuda"):
        check_gpus_visible({"SLURM_JOB_GPUS": "0,1"}, cuda_available=False, cuda_build=None)
    with pytest.raises(StartupError, match=r"CUDA_VISIBLE_DEVICES=3 .*built for CUDA 12.8.*device_count\(\) = 0"):
        check_gpus_visible({"CUDA_VISIBLE_DEVICES": "3"}, cuda_available=False, cuda_build="12.8", device_count=0)
    check_gpus_visible({"CUDA_VISIBLE_DEVICES": "3"}, cuda_available=True)
    check_gpus_visible({}, cuda_available=False, cuda_build=None)  # no GPUs given: CPU is fine


def test_tide_train_stops_at_init_when_gpus_are_given_but_torch_has_none(monkeypatch, capsys, tmp_path):
    from tide_megatron.cli.train import main

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    (tmp_path / "c.yaml").write_text("name: x\n")
    assert main(["--config", str(tmp_path / "c.yaml")]) == 2
    err = capsys.readouterr().err
    assert "CUDA_VISIBLE_DEVICES=0,1 gives this job GPUs" in err and "torch" in err


def test_a_transformer_engine_this_torch_cannot_use_is_one_error():
    broken = TEStatus(True, False, "2.10.0", "import transformer_engine.pytorch failed: RuntimeError: Found empty "
                                             "transformer-engine meta package")
    with pytest.raises(TransformerEngineError, match=r"Transformer Engine 2.10.0 is installed but unusable with this "
                                                     r"torch \(built for CUDA 12.8\).*meta package"):
        check_transformer_engine_install(broken, cuda_build="12.8")
    with pytest.raises(TransformerEngineError, match="next to a CPU-only torch"):
        check_transformer_engine_install(broken, cuda_build="")
    check_transformer_engine_install(TEStatus(False, False, None, "transformer_engine is not installed"), "12.8")
    check_transformer_engine_install(TEStatus(True, False, "2.10.0", "torch sees no CUDA device"), "12.8")


@pytest.mark.parametrize("cfg, machine, message", [
    (PrecisionConfig(fp8=True), dict(cuda_available=False), "precision.fp8: FP8 needs a CUDA GPU"),
    (PrecisionConfig(fp8=True), dict(cuda_available=True, te=TEStatus(False, False, None, "transformer_engine is not "
                                                                      "installed")), "Transformer Engine is not usable"),
    (PrecisionConfig(fp8=True, fp8_recipe="tensorwise"), dict(cuda_available=True, te=TEStatus(True, True, "2.1.0", "")),
     r"precision.fp8_recipe='tensorwise' needs Transformer Engine >= 2.2.0.dev0; this is 2.1.0"),
    (PrecisionConfig(fp8=True), dict(cuda_available=True, te=TEStatus(True, True, "2.10.0", ""),
                                     fp8_support=lambda: (False, "Device compute capability 8.9 or higher required "
                                                                 "for FP8 execution.")),
     "this GPU cannot run FP8 .*compute capability 8.9"),
])
def test_fp8_that_this_gpu_or_te_cannot_run_is_refused(cfg, machine, message):
    with pytest.raises(ConfigError, match=message):
        check_fp8_available(cfg, **machine)


def test_fp8_on_a_capable_gpu_and_te_passes():
    check_fp8_available(PrecisionConfig(fp8=True, fp8_recipe="tensorwise"), cuda_available=True,
                        te=TEStatus(True, True, "2.10.0", ""), fp8_support=lambda: (True, ""))


# ------------------------------------------------------------------------------------------------------
# Layouts and MoE kernels
# ------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("preflight")
    save_tiny_qwen3(str(root / "student"))
    write_tiny_llada2(root / "llada2", seed=0)
    return root


def _cfg(root, *overrides):
    return load_config(None, [f"student.checkpoint={root / 'student'}", f"teacher.checkpoint={root / 'llada2'}",
                              "objective.mode=reverse_alm", *overrides])


@pytest.mark.parametrize("override, message", [
    ("teacher.ep=3", r"teacher.tp/pp/ep/etp: .*expert-parallel size ep=3 does not divide num_experts=8"),
    ("teacher.etp=3", r"teacher.tp/pp/ep/etp: .*etp=3 does not divide moe_intermediate_size=32"),
    ("teacher.tp=8", r"teacher.tp/pp/ep/etp: .*tp=8 must divide num_attention_heads=4"),
    ("teacher.pp=3", r"pipeline size pp=3 does not divide num_hidden_layers=4"),
    ("student.tp=3", r"student.tp: --tp 3 does not divide"),
    ("teacher.moe_grouped_gemm=true", r"teacher.moe_grouped_gemm=true needs Transformer Engine.*backend: local"),
    ("teacher.moe_dispatcher=flex", r"teacher.moe_dispatcher: expected one of alltoall, allgather"),
])
def test_layouts_and_kernels_the_models_cannot_run_are_refused_before_any_build(checkpoints, override, message):
    cfg = _cfg(checkpoints, override)
    with pytest.raises(StartupError, match=message):
        check_layouts(cfg, "local")


def test_good_layouts_pass_and_the_teacher_kernels_resolve_per_backend(checkpoints):
    cfg = _cfg(checkpoints, "teacher.ep=2", "teacher.etp=2", "teacher.tp=2")
    check_layouts(cfg, "local")
    assert teacher_moe_kernels(cfg.teacher, "local").grouped_gemm is False
    assert teacher_moe_kernels(cfg.teacher, "te").grouped_gemm is True
    off = _cfg(checkpoints, "teacher.moe_grouped_gemm=false", "teacher.moe_permute_fusion=false")
    assert teacher_moe_kernels(off.teacher, "te") == MoEKernels(False, False, "alltoall")


def test_expert_tensor_parallelism_with_expert_parallelism_is_refused_on_gloo(checkpoints):
    """etp>1 with ep>1 all-gathers uneven token counts (gloo raises 'invalid tensor size' mid-forward)."""
    cfg = _cfg(checkpoints, "teacher.ep=2", "teacher.etp=2", "teacher.tp=2")
    with pytest.raises(StartupError, match=r"teacher.etp: etp=2 with ep=2 .* gloo .* teacher.etp=1"):
        check_collectives(cfg, "gloo")
    check_collectives(cfg, "nccl")
    check_collectives(_cfg(checkpoints, "teacher.etp=2"), "gloo")  # ep=1: every expert rank sees every token

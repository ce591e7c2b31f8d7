"""MoE kernels per backend (models/moe_kernels.py): grouped GEMM and permute fusion on with Transformer Engine,
off with a reason on the local backend, one clear error per setting a backend cannot run."""

import pytest
import torch

from tests.reference.llada2_checkpoint import TINY_LLADA2
from tide_megatron.models.llada2.config import LLaDA2Config
from tide_megatron.models.moe_kernels import MoEKernelError, MoEKernels, resolve_moe_kernels

CFG = LLaDA2Config.from_dict({**TINY_LLADA2, "model_type": "llada2_moe"})


def test_te_backend_defaults_to_grouped_gemm_and_fused_permutation_with_alltoall():
    k = resolve_moe_kernels("te")
    assert (k.grouped_gemm, k.permute_fusion, k.dispatcher) == (True, True, "alltoall")
    assert resolve_moe_kernels("te", grouped_gemm=False, permute_fusion=False, dispatcher="allgather") == \
        MoEKernels(False, False, "allgather")
    assert resolve_moe_kernels("te", te_version_ok=False).permute_fusion is False  # TE < 2.1: fusion off by default


def test_local_backend_turns_both_off_with_a_reason_and_builds_on_cpu():
    k = resolve_moe_kernels("local")
    assert (k.grouped_gemm, k.permute_fusion, k.dispatcher) == (False, False, "alltoall") and "local backend" in k.note
    tc = CFG.to_transformer_config(moe_kernels=k, params_dtype=torch.float32)
    assert (tc.moe_grouped_gemm, tc.moe_permute_fusion, tc.moe_token_dispatcher_type) == (False, False, "alltoall")


@pytest.mark.parametrize("kwargs, field", [
    (dict(backend="local", grouped_gemm=True), "teacher.moe_grouped_gemm=true needs Transformer Engine"),
    (dict(backend="local", permute_fusion=True), "teacher.moe_permute_fusion=true needs Transformer Engine"),
    (dict(backend="te", dispatcher="flex"), "teacher.moe_dispatcher: expected one of alltoall, allgather"),
    (dict(backend="te", permute_fusion=True, te_version_ok=False), "needs Transformer Engine >= 2.1.0"),
])
def test_bad_combinations_are_one_clear_error(kwargs, field):
    with pytest.raises(MoEKernelError, match=field):
        resolve_moe_kernels(**kwargs)


def test_te_kernels_reach_the_transformer_config_fields():
    """On a CPU-only install megatron-core's own check trips over the missing TE permutation kernels: the fields
    arrive in the TransformerConfig."""
    fields = resolve_moe_kernels("te").transformer_config_fields()
    assert fields == {"moe_grouped_gemm": True, "moe_permute_fusion": True, "moe_token_dispatcher_type": "alltoall"}
    with pytest.raises(ImportError, match="fused_permute"):
        CFG.to_transformer_config(moe_kernels=resolve_moe_kernels("te"), params_dtype=torch.float32)

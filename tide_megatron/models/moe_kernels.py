"""Which MoE kernels a teacher runs: grouped GEMM experts, fused token permutation, the token dispatcher.

With Transformer Engine (the ``te`` backend) both kernels are on by default with the alltoall dispatcher:
megatron-core's `TEGroupedMLP` runs all local experts in one grouped GEMM, and TE's fused permute/unpermute
replaces the torch gather/scatter. The local backends (CPU) have neither: TE provides the kernels, and
megatron's non-TE `GroupedMLP` needs the CUDA-only ``grouped_gemm`` package. The config fields are
``teacher.moe_grouped_gemm``, ``teacher.moe_permute_fusion`` (None = this default) and ``teacher.moe_dispatcher``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

#: Dispatchers that run without extra packages (megatron's ``flex`` dispatcher needs DeepEP / HybridEP).
DISPATCHERS = ("alltoall", "allgather")
#: Transformer Engine needed for megatron-core 0.16.1's fused permutation (its TransformerConfig check).
PERMUTE_FUSION_MIN_TE = "2.1.0"


class MoEKernelError(ValueError):
    """A MoE kernel setting this backend cannot run."""


@dataclass(frozen=True)
class MoEKernels:
    grouped_gemm: bool = False
    permute_fusion: bool = False
    dispatcher: str = "alltoall"
    note: str = ""  # why a kernel is off, for the run log

    def transformer_config_fields(self) -> dict:
        """The megatron-core `TransformerConfig` fields."""
        return {"moe_grouped_gemm": self.grouped_gemm, "moe_permute_fusion": self.permute_fusion,
                "moe_token_dispatcher_type": self.dispatcher}


def resolve_moe_kernels(backend: str, grouped_gemm: Optional[bool] = None, permute_fusion: Optional[bool] = None,
                        dispatcher: str = "alltoall", te_version_ok: bool = True) -> MoEKernels:
    """The kernels for ``backend`` ('te', or a local one); None = the backend's default; one clear error per bad choice.

    ``te_version_ok``: the installed TE is new enough for fused permutation (>= 2.1.0).
    """
    if dispatcher not in DISPATCHERS:
        raise MoEKernelError(f"teacher.moe_dispatcher: expected one of {', '.join(DISPATCHERS)}, got {dispatcher!r} "
                             "(megatron's 'flex' dispatcher needs DeepEP, which this project does not install)")
    if backend == "te":
        fuse = te_version_ok if permute_fusion is None else permute_fusion
        if fuse and not te_version_ok:
            raise MoEKernelError(f"teacher.moe_permute_fusion=true needs Transformer Engine >= {PERMUTE_FUSION_MIN_TE}; "
                                 "upgrade TE (pip install -e '.[gpu]') or set teacher.moe_permute_fusion=false")
        return MoEKernels(grouped_gemm=True if grouped_gemm is None else grouped_gemm, permute_fusion=fuse,
                          dispatcher=dispatcher)
    why = f"the {backend} backend (local parts, no Transformer Engine, e.g. CPU) has no {{}} kernel"
    if grouped_gemm:
        raise MoEKernelError("teacher.moe_grouped_gemm=true needs Transformer Engine (the te backend, GPU): "
                             + why.format("grouped GEMM") + "; set teacher.moe_grouped_gemm=false or leave it unset")
    if permute_fusion:
        raise MoEKernelError("teacher.moe_permute_fusion=true needs Transformer Engine (the te backend, GPU): "
                             + why.format("fused permutation") + "; set teacher.moe_permute_fusion=false or leave it "
                             "unset")
    return MoEKernels(False, False, dispatcher, note="grouped GEMM and permute fusion off: " +
                      why.format("grouped GEMM or fused permutation"))

"""The fused-norm check of tests/unit/models/test_fused_norms.py at TP=2 (+ sequence parallelism for the MoE):
for every family, the model whose norms are fused into the next linear as Transformer Engine fuses them
(backend "local_fused") gives the unfused spec's logits, loaded through the converter both from HF
(streamed, this rank's slices) and from a dist checkpoint written by the other spec."""

import os
import shutil
import tempfile

import pytest
import torch
import torch.distributed as dist

from tests.reference.families import FAMILIES, write_family
from tide_megatron.distributed import ParallelLayout, build_model_grid, seed_model_parallel_rng
from tide_megatron.models.convert.mcore_dir import hf_to_mcore, load_mcore_checkpoint
from tide_megatron.models.registry import get_architecture


def _shared_tmpdir() -> str:
    path = [tempfile.mkdtemp(prefix="tide-fused-") if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(path, src=0)
    return path[0]


@pytest.mark.parametrize("name", FAMILIES)
def test_tp2_fused_norm_logits_equal_unfused_through_the_converter(closing, name):
    root = _shared_tmpdir()
    hf = os.path.join(root, "hf")
    if dist.get_rank() == 0:
        write_family(name, hf)
    dist.barrier()
    arch = get_architecture(name)
    grid = closing(build_model_grid(ParallelLayout(tp=2), "fused-tp2"))
    seed_model_parallel_rng(0, tp_rank=grid.tp_rank)
    unfused, args, _ = arch.build_from_hf(hf, grid.pgs, torch.float32, backend="local")
    fused, _, _ = arch.build_from_hf(hf, grid.pgs, torch.float32, backend="local_fused")
    assert not any(k.endswith("input_layernorm.weight") for k in fused.state_dict())
    assert any(k.endswith("linear_qkv.layer_norm_weight") for k in fused.state_dict())
    cases = arch.verify_cases(args.vocab_size, 8, 4, 2, torch.Generator().manual_seed(0))

    def logits(model):
        with torch.no_grad():
            return {case: model(ids, pos, allowed) for case, (ids, pos, allowed) in cases.items()}

    want = logits(unfused)
    for case, got in logits(fused).items():
        torch.testing.assert_close(got, want[case], rtol=0, atol=1e-6, msg=f"{name} {case}")
    mcore = os.path.join(root, "mcore")
    hf_to_mcore(arch, hf, mcore, tp=2, backend="local")
    with torch.no_grad():
        for p in fused.parameters():
            p.zero_()
    load_mcore_checkpoint(fused, mcore)
    for case, got in logits(fused).items():
        torch.testing.assert_close(got, want[case], rtol=0, atol=1e-6, msg=f"{name} {case} (dist checkpoint)")
    dist.barrier()
    if dist.get_rank() == 0:
        shutil.rmtree(root, ignore_errors=True)

"""tide-convert on 2 gloo ranks for every family through the one registry: written at TP=2, PP=2 or (the MoE)
EP=2, back to HF exactly, `verify` at TP=2 against transformers' own class / the checkpoint's own modeling
code, and `verify` failing (exit status 1) on a perturbed weight. (Qwen3 TP=2 / PP=2 round trips are also in
test_student_model.py.)"""

import os
import shutil
import tempfile

import pytest
import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file

from tests.reference.families import FAMILIES, VERIFY_FLAGS, write_family
from tide_megatron.cli.convert import main as tide_convert
from tide_megatron.cli.convert import run as tide_convert_run
from tide_megatron.models.safetensors_reader import SafetensorsReader

LAYOUTS = [("wedlm", "tp"), ("wedlm", "pp"), ("llada2", "tp"), ("llada2", "pp"), ("llada2", "ep")]


def _shared_tmpdir() -> str:
    path = [tempfile.mkdtemp(prefix="tide-convert-") if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(path, src=0)
    return path[0]


@pytest.fixture(scope="module")
def hf_dirs():
    """One tiny HF checkpoint per family, written by rank 0 into a directory both ranks read."""
    root = _shared_tmpdir()
    if dist.get_rank() == 0:
        for arch in FAMILIES:
            write_family(arch, os.path.join(root, arch))
    dist.barrier()
    yield {arch: os.path.join(root, arch) for arch in FAMILIES}, root
    dist.barrier()
    if dist.get_rank() == 0:
        shutil.rmtree(root, ignore_errors=True)


def _convert(hf: str, root: str, arch: str, flag: str, tag: str = "") -> str:
    mcore = os.path.join(root, f"mcore_{arch}_{flag}{tag}")
    assert tide_convert(["hf-to-mcore", "--arch", arch, "--hf-dir", hf, "--mcore-dir", mcore, f"--{flag}", "2"]) == 0
    return mcore


@pytest.mark.parametrize("arch, flag", LAYOUTS, ids=[f"{a}-{f}2" for a, f in LAYOUTS])
def test_two_rank_conversion_is_exact_and_verifies_at_tp2(hf_dirs, arch, flag):
    dirs, root = hf_dirs
    mcore = _convert(dirs[arch], root, arch, flag)
    back = os.path.join(root, f"back_{arch}_{flag}")
    assert tide_convert(["mcore-to-hf", "--mcore-dir", mcore, "--hf-dir", back]) == 0
    original, restored = SafetensorsReader(dirs[arch]), SafetensorsReader(back)
    assert set(original.keys()) == set(restored.keys())
    for key in original.keys():
        assert torch.equal(original.get(key), restored.get(key)), key
    diffs = tide_convert_run(["verify", "--hf-dir", dirs[arch], "--mcore-dir", mcore, *VERIFY_FLAGS[arch]])
    assert max(diffs.values()) <= 1e-4, diffs


PERTURBED = {"qwen3": "model.layers.0.mlp.down_proj.weight", "wedlm": "model.layers.2.self_attn.k_norm.weight",
             "llada2": "model.layers.3.mlp.shared_experts.up_proj.weight"}


@pytest.mark.parametrize("arch", FAMILIES)
def test_verify_at_tp2_fails_on_a_perturbed_weight(hf_dirs, arch):
    dirs, root = hf_dirs
    mcore = _convert(dirs[arch], root, arch, "tp", tag="_for_perturbed")
    other = os.path.join(root, f"perturbed_{arch}")
    key = PERTURBED[arch]
    if dist.get_rank() == 0:
        shutil.copytree(dirs[arch], other)
        shard = str(SafetensorsReader(other).key_to_file[key])
        state = load_file(shard)
        state[key] = (state[key] * 1.1).contiguous()
        save_file(state, shard, metadata={"format": "pt"})
    dist.barrier()
    assert tide_convert(["verify", "--hf-dir", other, "--mcore-dir", mcore, *VERIFY_FLAGS[arch]]) == 1

"""tide-convert through the one registry for every model family (Qwen3 student, WeDLM teacher, LLaDA2 MoE
teacher): HF -> megatron -> HF is exact, `verify` agrees with transformers' own class (Qwen3 / WeDLM) or the
checkpoint's own modeling code (LLaDA2), and `verify` fails (exit status 1) when a weight differs."""

import json
import os
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.reference.families import FAMILIES, VERIFY_FLAGS, write_family
from tide_megatron.cli.convert import main as tide_convert
from tide_megatron.cli.convert import run as tide_convert_run
from tide_megatron.models.registry import ARCHITECTURES
from tide_megatron.models.safetensors_reader import SafetensorsReader


def tensors(hf_dir: str) -> dict[str, torch.Tensor]:
    reader = SafetensorsReader(hf_dir)
    return {k: reader.get(k) for k in reader.keys()}


def perturbed_copy(hf_dir: str, out_dir: str, key: str, change) -> str:
    """A copy of `hf_dir` whose tensor `key` is replaced by `change(tensor)`."""
    shutil.copytree(hf_dir, out_dir)
    shard = str(SafetensorsReader(out_dir).key_to_file[key])
    state = load_file(shard)
    state[key] = change(state[key]).contiguous()
    save_file(state, shard, metadata={"format": "pt"})
    return out_dir


@pytest.fixture(scope="module", params=FAMILIES)
def converted(request, tmp_path_factory):
    arch, root = request.param, tmp_path_factory.mktemp(request.param)
    hf = write_family(arch, root / "hf")
    mcore = str(root / "mcore")
    assert tide_convert(["hf-to-mcore", "--arch", arch, "--hf-dir", hf, "--mcore-dir", mcore]) == 0
    assert json.load(open(os.path.join(mcore, "tide_model.json")))["architecture"] == arch
    return arch, hf, mcore, root


def test_the_registry_holds_every_family():
    assert set(ARCHITECTURES) == set(FAMILIES)


def test_megatron_to_hf_reproduces_every_tensor_exactly(converted):
    arch, hf, mcore, root = converted
    back = str(root / "hf_back")
    assert tide_convert(["mcore-to-hf", "--mcore-dir", mcore, "--hf-dir", back, "--max-shard-mb", "1"]) == 0
    original, restored = tensors(hf), tensors(back)
    assert set(original) == set(restored)
    for key, tensor in original.items():
        assert restored[key].dtype == tensor.dtype and torch.equal(restored[key], tensor), key
    assert json.load(open(os.path.join(back, "config.json"))) == json.load(open(os.path.join(hf, "config.json")))


def test_verify_agrees_with_the_reference(converted, capsys):
    arch, hf, mcore, _ = converted
    diffs = tide_convert_run(["verify", "--hf-dir", hf, "--mcore-dir", mcore, *VERIFY_FLAGS[arch]])
    assert max(diffs.values()) <= 1e-4, diffs
    assert "verify: OK" in capsys.readouterr().out


PERTURB = {  # a norm weight (where the fused-norm mapping matters) and, for the MoE, the router's expert bias
    "qwen3": [("model.layers.1.post_attention_layernorm.weight", lambda t: t * 1.05)],
    "wedlm": [("model.layers.3.input_layernorm.weight", lambda t: t * 1.05)],
    "llada2": [("model.layers.0.post_attention_layernorm.weight", lambda t: t * 1.05),
               ("model.layers.2.mlp.gate.expert_bias", lambda t: t + 3.0 * (torch.arange(t.numel()) == 6))],
}


@pytest.mark.parametrize("which", [0, 1])
def test_verify_fails_when_a_weight_differs(converted, which, tmp_path, capsys):
    arch, hf, mcore, _ = converted
    if which >= len(PERTURB[arch]):
        pytest.skip(f"{arch}: one perturbation")
    key, change = PERTURB[arch][which]
    other = perturbed_copy(hf, str(tmp_path / "perturbed"), key, change)
    assert tide_convert(["verify", "--hf-dir", other, "--mcore-dir", mcore, *VERIFY_FLAGS[arch]]) == 1
    err = capsys.readouterr().err
    assert "verify failed" in err and "> --tolerance 0.0001" in err, err
    # the same check with a tolerance above the difference passes: the exit status follows --tolerance
    assert tide_convert(["verify", "--hf-dir", other, "--mcore-dir", mcore, "--tolerance", "100",
                         *VERIFY_FLAGS[arch]]) == 0


def test_bf16_checkpoint_verifies_at_the_default_tolerance(converted, capsys):
    """verify rounds the HF weights to the dtype the checkpoint holds them in, so the fp32 bound holds."""
    arch, hf, _, root = converted
    mcore = str(root / "mcore_bf16")
    assert tide_convert(["hf-to-mcore", "--arch", arch, "--hf-dir", hf, "--mcore-dir", mcore,
                         "--dtype", "bfloat16"]) == 0
    diffs = tide_convert_run(["verify", "--hf-dir", hf, "--mcore-dir", mcore, *VERIFY_FLAGS[arch]])
    assert max(diffs.values()) <= 1e-4, diffs


def test_an_hf_tensor_without_a_megatron_home_is_refused(converted, tmp_path, capsys):
    arch, hf, _, _ = converted
    other = str(tmp_path / "extra")
    shutil.copytree(hf, other)
    save_file({"model.layers.0.stray.weight": torch.zeros(2)}, os.path.join(other, "stray.safetensors"))
    index = os.path.join(other, "model.safetensors.index.json")
    if os.path.isfile(index):
        data = json.load(open(index))
        data["weight_map"]["model.layers.0.stray.weight"] = "stray.safetensors"
        json.dump(data, open(index, "w"))
    out = str(tmp_path / "out")
    assert tide_convert(["hf-to-mcore", "--arch", arch, "--hf-dir", other, "--mcore-dir", out]) == 2
    assert "model.layers.0.stray.weight" in capsys.readouterr().err and not os.path.exists(out)

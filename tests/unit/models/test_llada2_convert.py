"""HF LLaDA2 checkpoint → megatron (single process): parity with the reference and with the
checkpoint's own trust_remote_code modeling (which has the published file's mask handling), `verify`
failing where it must, and one clear error per bad checkpoint (§2.1)."""

import json

import pytest
import torch

from tests.reference.llada2_checkpoint import build_random_reference, write_tiny_llada2
from tide_megatron.cli.convert import main as tide_convert
from tide_megatron.cli.convert import run as tide_convert_run
from tide_megatron.distributed import ParallelLayout, build_model_grid, init_distributed, seed_model_parallel_rng
from tide_megatron.models.convert.reference import load_remote_code_reference
from tide_megatron.models.llada2 import (
    CheckpointError,
    LLaDA2ConfigError,
    forward_llada2,
    load_llada2_teacher,
)


@pytest.fixture(scope="module")
def pgs():
    init_distributed("gloo")
    grid = build_model_grid(ParallelLayout(), "teacher")
    seed_model_parallel_rng(0)
    return grid.pgs


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_tiny_llada2(tmp_path_factory.mktemp("llada2"), seed=3)


def test_megatron_logits_equal_reference(pgs, checkpoint):
    model, cfg = load_llada2_teacher(checkpoint, pgs, torch.float32)
    ids = torch.randint(0, 120, (2, 10), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[0, 6:] = 0
    with torch.no_grad():
        got = forward_llada2(model, ids, mask)
        want = build_random_reference(3)(ids, attention_mask=mask).logits
    assert (got - want)[mask.bool()].abs().max() < 1e-4
    # bidirectional: changing the last real token changes the first position's logits
    ids2 = ids.clone()
    ids2[1, -1] = (ids2[1, -1] + 1) % 120
    with torch.no_grad():
        assert (forward_llada2(model, ids2, mask)[1, 0] - got[1, 0]).abs().max() > 1e-4


@pytest.fixture(scope="module")
def converted(checkpoint, tmp_path_factory):
    mcore = str(tmp_path_factory.mktemp("llada2_mcore") / "mcore")
    assert tide_convert(["hf-to-mcore", "--arch", "llada2", "--hf-dir", str(checkpoint), "--mcore-dir", mcore]) == 0
    return mcore


def test_verify_with_trust_remote_code(checkpoint, converted):
    diffs = tide_convert_run(["verify", "--hf-dir", str(checkpoint), "--mcore-dir", converted, "--trust-remote-code"])
    assert set(diffs) == {"bidirectional", "key_padding"} and max(diffs.values()) < 1e-4, diffs


def test_the_checkpoints_modeling_code_has_the_published_mask_handling(checkpoint):
    """The file verify runs turns a 2-D mask with a 0 causal (as the published one does) and uses a 4-D float
    mask as given: so a verify that passed a 2-D padding mask would see large differences."""
    theirs = load_remote_code_reference(str(checkpoint), trust_remote_code=True)
    ids = torch.randint(0, 120, (2, 10), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    additive = torch.zeros(2, 1, 10, 10).masked_fill(~mask.bool()[:, None, None, :], torch.finfo(torch.float32).min)
    with torch.no_grad():
        want = build_random_reference(3)(ids, attention_mask=mask).logits
        assert (theirs(ids, attention_mask=mask).logits - want).abs().max() > 0.5  # made causal
        assert (theirs(ids, attention_mask=additive).logits - want).abs().max() < 1e-5  # used as given


def test_verify_needs_the_trust_remote_code_flag(checkpoint, converted, capsys):
    assert tide_convert(["verify", "--hf-dir", str(checkpoint), "--mcore-dir", converted]) == 2
    err = capsys.readouterr().err
    assert "--trust-remote-code" in err and "auto_map" in err and "modeling_llada2_moe.py" in err


def test_verify_names_the_transformers_version_the_modeling_code_needs(converted, tmp_path, capsys):
    """The published file imports transformers.modeling_attn_mask_utils, which transformers 5 removed."""
    hf = write_tiny_llada2(tmp_path / "hf", seed=3, modeling="published_imports",
                           config_overrides={"transformers_version": "4.57.1"})
    assert tide_convert(["verify", "--hf-dir", str(hf), "--mcore-dir", converted, "--trust-remote-code"]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1
    assert "modeling_attn_mask_utils" in err and "transformers 4.57.1" in err and "modeling_llada2_moe.py" in err


def test_missing_expert_tensor_is_named(pgs, tmp_path):
    write_tiny_llada2(tmp_path, drop_keys=("model.layers.2.mlp.experts.5.up_proj.weight",))
    with pytest.raises(CheckpointError, match=r"model\.layers\.2\.mlp\.experts\.5\.up_proj\.weight' is missing"):
        load_llada2_teacher(tmp_path, pgs, torch.float32)


def test_vocab_mismatch(pgs, tmp_path):
    write_tiny_llada2(tmp_path, config_overrides={"vocab_size": 256})
    with pytest.raises(CheckpointError, match="vocabulary mismatch"):
        load_llada2_teacher(tmp_path, pgs, torch.float32)
    ok = write_tiny_llada2(tmp_path / "ok")
    with pytest.raises(CheckpointError, match="expects 151936"):
        load_llada2_teacher(ok, pgs, torch.float32, expected_vocab_size=151936)


def test_other_architecture_is_refused(pgs, tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen3", "architectures": ["Qwen3ForCausalLM"],
                                                      "hidden_size": 64}))
    with pytest.raises(LLaDA2ConfigError, match="model_type='qwen3'.*not an LLaDA2-MoE checkpoint"):
        load_llada2_teacher(tmp_path, pgs, torch.float32)


def test_unexpressible_router_setting_in_checkpoint(pgs, tmp_path):
    write_tiny_llada2(tmp_path, config_overrides={"topk_group": 1})
    with pytest.raises(LLaDA2ConfigError, match="top-2"):
        load_llada2_teacher(tmp_path, pgs, torch.float32)


def test_verify_without_the_modeling_code_is_a_clear_error(converted, tmp_path):
    write_tiny_llada2(tmp_path, seed=3)
    (tmp_path / "modeling_llada2_moe.py").unlink()
    with pytest.raises(CheckpointError, match="own modeling code"):
        tide_convert_run(["verify", "--hf-dir", str(tmp_path), "--mcore-dir", converted, "--trust-remote-code"])


def test_key_padding_reaches_core_attention_as_a_description(pgs, checkpoint):
    """LLaDA2's mask is key padding only (§2.1): every core attention gets a `KeyPaddingMask` (TE runs it as its
    fused ``padding`` type, or ``no_mask`` without padding), never a dense [b, 1, L, L] arbitrary mask."""
    from tide_megatron.models.attention_mask import KeyPaddingMask
    from tide_megatron.teacher.engine import TeacherEngine

    model, _ = load_llada2_teacher(checkpoint, pgs, torch.float32)
    seen = []
    hooks = [layer.self_attention.core_attention.register_forward_pre_hook(lambda m, a: seen.append(a[3]))
             for layer in model.decoder.layers]
    ids = torch.randint(0, 120, (2, 10), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[0, 6:] = 0
    with torch.no_grad():
        forward_llada2(model, ids, mask)
        assert len(seen) == len(model.decoder.layers) and all(isinstance(m, KeyPaddingMask) for m in seen)
        assert seen[0].right_padded and torch.equal(seen[0].te_padding_mask()[:, 0, 0], mask == 0)
        seen.clear()
        forward_llada2(model, ids, torch.ones_like(ids))  # no padding: no mask at all
        assert all(m.key_valid is None for m in seen)
        seen.clear()
        engine = TeacherEngine(model, pgs, pad_token_id=126)  # the trainer's path: [b, L] 0/1 from the batch
        targets = torch.where(mask.bool(), ids, -1)
        engine.token_logprobs(ids, targets, mask)
        assert seen and all(isinstance(m, KeyPaddingMask) and m.has_padding for m in seen)
    for h in hooks:
        h.remove()

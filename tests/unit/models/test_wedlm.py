"""WeDLM teacher inputs and config checks (§2.2, §9 pitfalls 4, 5, 17)."""

import json

import pytest
import torch

from tests.reference.wedlm_checkpoint import wedlm_inputs, write_tiny_wedlm, xt_rows
from tide_megatron.diffusion.masks import block_diffusion_mask
from tide_megatron.models.qwen3.config import wedlm_args_from_hf


def test_inputs_are_x0_first_with_duplicated_positions_and_padding_blocked():
    """The reference single-pass input the engine tests use (tests/reference), checked against §2.2."""
    x0 = torch.arange(8).view(1, 8)
    xt = torch.full((1, 8), 99)
    pad = torch.ones(1, 8, dtype=torch.long)
    pad[0, 6:] = 0
    ids, pos, allowed = wedlm_inputs(x0, xt, 4, pad)
    assert torch.equal(ids[0, :8], x0[0]) and torch.equal(ids[0, 8:], xt[0])
    assert torch.equal(pos[0], torch.cat([torch.arange(8), torch.arange(8)]))
    bd = block_diffusion_mask(8, 4, "x0_xt")
    real = torch.tensor([1, 1, 1, 1, 1, 1, 0, 0] * 2, dtype=torch.bool)
    assert torch.equal(allowed[0, 0], bd & real[:, None] & real[None, :])
    assert torch.equal(xt_rows(torch.tensor([[0, 3]]), 8), torch.tensor([[0, 11]]))


def test_config_checks(tmp_path):
    path = write_tiny_wedlm(tmp_path / "ok")
    args = wedlm_args_from_hf(path, tp=2, params_dtype=torch.float32)
    assert args.config.qk_layernorm and args.vocab_size == 128
    cfg = json.loads((path / "config.json").read_text())
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text(json.dumps({**cfg, "qk_norm": False}))
    with pytest.raises(ValueError, match="qk_norm=false"):
        wedlm_args_from_hf(bad)
    (bad / "config.json").write_text(json.dumps({**cfg, "model_type": "llada2_moe"}))
    with pytest.raises(ValueError, match="model_type 'llada2_moe'"):
        wedlm_args_from_hf(bad)

"""The megatron-core student in evaluation: same logits, samples and bits per byte as transformers' Qwen3."""

import pytest
import torch

from tide_megatron.diffusion.masks import block_diffusion_mask
from tide_megatron.diffusion.sampler import SamplerConfig, bd3lm_generate
from tide_megatron.eval.models import HFDenoiser, load_mcore_student
from tide_megatron.eval.nll import Window, bits_per_byte

VOCAB, MASK, PAD, EOS = 128, 127, 126, 125


@pytest.fixture(scope="module")
def both_students(tmp_path_factory):
    from tide_megatron.cli.convert import main as tide_convert
    from tide_megatron.models.convert.reference import load_hf_reference
    from tide_megatron.models.qwen3.tiny import save_tiny_qwen3

    root = tmp_path_factory.mktemp("mcore_student")
    save_tiny_qwen3(str(root / "hf"), seed=3, vocab_size=VOCAB)
    assert tide_convert(["hf-to-mcore", "--hf-dir", str(root / "hf"), "--mcore-dir", str(root / "mcore")]) == 0
    return load_mcore_student(str(root / "mcore")), HFDenoiser(load_hf_reference(str(root / "hf")))


def test_megatron_logits_match_transformers_under_the_block_diffusion_mask(both_students):
    mc, hf = both_students
    L = 8
    ids = torch.randint(0, VOCAB, (2, 2 * L), generator=torch.Generator().manual_seed(0))
    pos = torch.arange(L).repeat(2).expand(2, -1)
    mask = block_diffusion_mask(L, 4).expand(2, -1, -1)
    torch.testing.assert_close(mc.full_forward(ids, pos, mask), hf.full_forward(ids, pos, mask), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(mc.rows_forward(ids, pos, mask, slice(0, L)), hf.full_forward(ids, pos, mask)[:, :L],
                               atol=1e-4, rtol=1e-4)


def test_megatron_sampler_and_bits_per_byte_match_transformers(both_students):
    mc, hf = both_students
    cfg = SamplerConfig(mask_id=MASK, pad_id=PAD, eos_id=EOS, block_size=4, max_new_tokens=12, steps=6)
    prompts = [[1, 2, 3, 4, 5, 6, 7], [8, 9, 10]]
    assert torch.equal(bd3lm_generate(mc.denoiser(), prompts, cfg).tokens, bd3lm_generate(hf, prompts, cfg).tokens)
    windows = [Window(list(range(i, i + 16)), [1 + (j % 3) for j in range(16)]) for i in range(3)]
    a = bits_per_byte(mc.full_forward, windows, MASK, 4, draws=2, seed=5)
    b = bits_per_byte(hf.full_forward, windows, MASK, 4, draws=2, seed=5)
    assert a.elbo_bpb == pytest.approx(b.elbo_bpb, rel=1e-5) and a.masked_bpb == pytest.approx(b.masked_bpb, rel=1e-5)


def test_megatron_static_kv_cache_equals_prefix_recompute(both_students):
    mc, hf = both_students
    cached, recompute = mc.denoiser(max_sequence_length=64), mc.denoiser()
    assert type(cached).__name__ == "MegatronCachedDenoiser" and type(recompute).__name__ == "RecomputeDenoiser"
    cfg = SamplerConfig(mask_id=MASK, pad_id=PAD, eos_id=EOS, block_size=4, max_new_tokens=12, steps=6)
    prompts = [[1, 2, 3, 4, 5, 6, 7], [8, 9, 10]]
    out_c = bd3lm_generate(cached, prompts, cfg)
    out_r = bd3lm_generate(recompute, prompts, cfg)
    assert torch.equal(out_c.tokens, out_r.tokens) and torch.equal(out_c.commit_step, out_r.commit_step)
    assert torch.equal(out_c.tokens, bd3lm_generate(hf, prompts, cfg).tokens)
    ids, pos = torch.tensor([[1, 2, 3, 4]]), torch.arange(4)[None]
    mask = torch.ones(1, 4, 4, dtype=torch.bool).tril()
    block, bpos = torch.tensor([[MASK, 5, MASK, 6]]), torch.arange(4, 8)[None]
    bmask = torch.ones(1, 4, 8, dtype=torch.bool)
    torch.testing.assert_close(cached.forward_block(block, bpos, bmask, cached.encode_prefix(ids, pos, mask)),
                               recompute.forward_block(block, bpos, bmask, recompute.encode_prefix(ids, pos, mask)),
                               atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="KV cache of 8 slots"):
        bd3lm_generate(mc.denoiser(max_sequence_length=8), prompts, cfg)

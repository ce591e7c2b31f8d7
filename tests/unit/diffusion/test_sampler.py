"""BD3LM sampler (spec §7.3): transfer schedule vectors (§11.8), decoding order, padding, KV cache."""

import pytest
import torch

from tide_megatron.diffusion.sampler import (SamplerConfig, bd3lm_generate, left_pad_prompts,
                                             prefix_block_causal_mask, transfer_schedule)
from tide_megatron.eval.models import HFDenoiser, RecomputeDenoiser

MASK, PAD, EOS, VOCAB = 30, 31, 29, 32


@pytest.mark.parametrize("n,steps,expected", [
    (32, 32, [1] * 32), (32, 8, [4] * 8), (8, 4, [2, 2, 2, 2]), (5, 3, [2, 2, 1]), (3, 3, [1, 1, 1]),
])
def test_transfer_schedule_matches_spec_vectors(n, steps, expected):
    assert transfer_schedule(n, steps) == expected


def test_transfer_schedule_edge_cases():
    assert transfer_schedule(256, 256) == [1] * 256
    assert transfer_schedule(2, 5) == [1, 1]  # 2/5 -> 0, 2/4 -> 0 (half-even), 2/3 -> 1, 1/2 -> 0, 1/1 -> 1
    assert sum(transfer_schedule(17, 6)) == 17
    with pytest.raises(ValueError, match="steps"):
        transfer_schedule(4, 0)


class PositionPreferenceLM(torch.nn.Module):
    """A fixed-weight LM whose logits depend only on the logical position: position p favours token
    ``favourite[p]`` with margin ``margin[p]`` (so its confidence rises with the margin)."""

    def __init__(self, favourite, margin):
        super().__init__()
        table = torch.zeros(len(favourite), VOCAB)
        table[torch.arange(len(favourite)), torch.as_tensor(favourite)] = torch.as_tensor(margin, dtype=torch.float)
        table[:, MASK] = 50.0  # the sampler must never pick the mask id, however likely
        self.table = torch.nn.Embedding.from_pretrained(table, freeze=True)

    def forward(self, ids, position_ids, mask):
        return self.table(position_ids)


def _favourites(n):
    return [(3 + 7 * p) % 28 for p in range(n)]


def test_decoding_order_is_most_confident_first_k_per_step():
    margins = [0.5, 3.0, 1.0, 6.0, 2.0, 5.0, 0.2, 4.0] * 2
    fav = _favourites(16)
    lm = PositionPreferenceLM(fav, [1.0] + margins[:15])
    cfg = SamplerConfig(mask_id=MASK, pad_id=PAD, eos_id=EOS, block_size=8, max_new_tokens=8, steps=4)
    out = bd3lm_generate(RecomputeDenoiser(lm), [[5]], cfg)  # prompt at position 0; block = positions 1..8
    assert out.tokens[0].tolist() == fav[1:9]
    block_margins = torch.tensor(margins[:15][0:8])
    rank = torch.argsort(block_margins, descending=True)
    expected_step = torch.empty(8, dtype=torch.long)
    expected_step[rank] = torch.arange(8) // 2  # [2, 2, 2, 2]: two most confident per step
    assert out.commit_step[0].tolist() == expected_step.tolist()
    assert out.forward_calls == 4


def test_left_padding_gives_logical_positions_and_block_multiple():
    ids, valid, pos = left_pad_prompts([[1, 2, 3], [4, 5, 6, 7, 8]], PAD, 4)
    assert ids.tolist() == [[PAD] * 5 + [1, 2, 3], [PAD] * 3 + [4, 5, 6, 7, 8]]
    assert pos.tolist() == [[0] * 5 + [0, 1, 2], [0] * 3 + [0, 1, 2, 3, 4]]
    mask = prefix_block_causal_mask(valid, 4)
    # row 7 of sequence 1 (block 1) sees the real keys of blocks 0 and 1, never pad
    assert mask[1, 7].tolist() == [False] * 3 + [True] * 5
    # row 3 (block 0, real) does not see block 1
    assert mask[1, 3].tolist() == [False, False, False, True, False, False, False, False]
    assert mask[0, 0].tolist() == [True] + [False] * 7  # a pad row sees only itself


def test_generation_continues_from_each_prompts_logical_position_and_stops_on_eos():
    fav = _favourites(40)
    fav[6:9] = [EOS, EOS, EOS]  # logical position 6 is eos: both prompts hit it in their first block
    lm = PositionPreferenceLM(fav, [2.0] * 40)
    cfg = SamplerConfig(mask_id=MASK, pad_id=PAD, eos_id=EOS, block_size=4, max_new_tokens=16, steps=16)
    out = bd3lm_generate(RecomputeDenoiser(lm), [[1, 2, 3], [4, 5, 6, 7, 8]], cfg)
    assert out.num_blocks == 1  # both blocks contain eos, so decoding stops after the first block
    assert out.tokens.tolist() == [fav[3:7], fav[5:9]]
    assert out.completions == [fav[3:6], fav[5:6]]


def test_temperature_sampling_is_reproducible_and_follows_a_dominant_token():
    fav = _favourites(20)
    lm = PositionPreferenceLM(fav, [30.0] * 20)
    cfg = SamplerConfig(mask_id=MASK, pad_id=PAD, eos_id=EOS, block_size=4, max_new_tokens=8, steps=8,
                        temperature=1.0)
    out1 = bd3lm_generate(RecomputeDenoiser(lm), [[1]], cfg, torch.Generator().manual_seed(0))
    assert out1.tokens[0].tolist() == fav[1:9]
    flat = PositionPreferenceLM(fav, [0.0] * 20)  # uniform over non-mask tokens: samples vary with the seed
    a = bd3lm_generate(RecomputeDenoiser(flat), [[1]], cfg, torch.Generator().manual_seed(1)).tokens
    b = bd3lm_generate(RecomputeDenoiser(flat), [[1]], cfg, torch.Generator().manual_seed(1)).tokens
    c = bd3lm_generate(RecomputeDenoiser(flat), [[1]], cfg, torch.Generator().manual_seed(2)).tokens
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert not (a == MASK).any()


@pytest.fixture(scope="module")
def tiny_qwen3():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.Qwen3Config(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                   max_position_embeddings=256, rope_theta=10000.0, tie_word_embeddings=True)
    torch.manual_seed(0)
    return transformers.Qwen3ForCausalLM(cfg).eval()


def test_hf_kv_cache_equals_prefix_recompute(tiny_qwen3):
    cached, recompute = HFDenoiser(tiny_qwen3), RecomputeDenoiser(HFDenoiser(tiny_qwen3).full_forward)
    prompts = [[1, 2, 3, 4, 5, 6, 7], [8, 9, 10]]
    ids, valid, pos = left_pad_prompts(prompts, PAD, 4)
    mask = prefix_block_causal_mask(valid, 4)
    block = torch.tensor([[MASK, 11, MASK, 12], [13, MASK, MASK, MASK]])
    bpos = valid.sum(1, keepdim=True) + torch.arange(4)
    bmask = torch.cat([valid[:, None].expand(2, 4, -1), torch.ones(2, 4, 4, dtype=torch.bool)], 2)
    a = cached.forward_block(block, bpos, bmask, cached.encode_prefix(ids, pos, mask))
    b = recompute.forward_block(block, bpos, bmask, recompute.encode_prefix(ids, pos, mask))
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    cfg = SamplerConfig(mask_id=MASK, pad_id=PAD, eos_id=EOS, block_size=4, max_new_tokens=12, steps=6)
    assert torch.equal(bd3lm_generate(cached, prompts, cfg).tokens, bd3lm_generate(recompute, prompts, cfg).tokens)


def test_hf_generation_ignores_left_padding(tiny_qwen3):
    model = HFDenoiser(tiny_qwen3)
    cfg = SamplerConfig(mask_id=MASK, pad_id=PAD, eos_id=EOS, block_size=4, max_new_tokens=8, steps=8)
    alone = bd3lm_generate(model, [[8, 9, 10]], cfg).tokens[0]
    batched = bd3lm_generate(model, [[1, 2, 3, 4, 5, 6, 7, 1, 2], [8, 9, 10]], cfg).tokens[1]
    assert torch.equal(alone, batched)


def test_bad_config_names_the_field():
    with pytest.raises(ValueError, match="SamplerConfig.block_size"):
        SamplerConfig(mask_id=0, pad_id=1, eos_id=2, block_size=0)
    with pytest.raises(ValueError, match=r"prompts\[1\]"):
        left_pad_prompts([[1], []], PAD, 4)
    lm = PositionPreferenceLM(_favourites(8), [1.0] * 8)
    with pytest.raises(ValueError, match="mask_id 40 is outside the model's vocabulary of 32"):
        bd3lm_generate(RecomputeDenoiser(lm), [[1]], SamplerConfig(mask_id=40, pad_id=PAD, eos_id=EOS, block_size=4,
                                                                  max_new_tokens=4, steps=4))

"""Noising (§1.3), [xt ; x0] inputs with duplicated positions (§1.4) and collation (§1.2)."""

import pytest
import torch

from tide_megatron.diffusion import IGNORE_INDEX, bd3lm_inputs, collate_student, mask_tokens, sample_t


def test_sample_t_range_and_mean():
    t = sample_t(20000, generator=torch.Generator().manual_seed(0))
    assert t.dtype == torch.float32 and t.min() >= 1e-3 and t.max() < 1.0
    assert abs(t.mean().item() - (1e-3 + (1 - 1e-3) * 0.5)) < 0.01


def test_mask_tokens_masks_only_maskable_at_rate_t():
    g = torch.Generator().manual_seed(1)
    x0 = torch.randint(0, 50, (4, 4000), generator=g)
    labels = x0.clone()
    labels[:, :1000] = IGNORE_INDEX  # prompt
    t = torch.tensor([0.1, 0.5, 0.9, 0.999])
    xt, m = mask_tokens(x0, labels, t, mask_id=99, generator=g)
    assert not m[:, :1000].any()
    assert torch.equal(xt[m], torch.full((int(m.sum()),), 99)) and torch.equal(xt[~m], x0[~m])
    rates = m[:, 1000:].float().mean(1)
    assert torch.allclose(rates, t, atol=0.03)


def test_inputs_duplicate_positions():
    """(The xt half is read with `logits_rows=slice(0, L)`: tests/unit/models/test_model.py.)"""
    xt, x0 = torch.tensor([[9, 9, 3]]), torch.tensor([[1, 2, 3]])
    ids, pos = bd3lm_inputs(xt, x0)
    assert ids.tolist() == [[9, 9, 3, 1, 2, 3]] and pos.tolist() == [[0, 1, 2, 0, 1, 2]]
    ids_b, _ = bd3lm_inputs(xt, x0, order="x0_xt")
    assert ids_b.tolist() == [[1, 2, 3, 9, 9, 3]]


def test_collate_fills_trained_eos_to_block_then_pads():
    EOS, PAD = 7, 0
    samples = [([1, 2, 3, 4, 5], [-100, -100, 3, 4, 5]), (list(range(10, 22)), list(range(10, 22)))]
    ids, labels = collate_student(samples, seq_len=12, block_size=4, eos_id=EOS, pad_id=PAD)
    assert ids[0].tolist() == [1, 2, 3, 4, 5, EOS, EOS, EOS, PAD, PAD, PAD, PAD]
    assert labels[0].tolist() == [-100, -100, 3, 4, 5, EOS, EOS, EOS, -100, -100, -100, -100]
    assert ids[1].tolist() == list(range(10, 22))  # truncated to 12, already a block multiple: no eos
    assert ids.dtype == labels.dtype == torch.long


def test_collate_rejects_seq_length_not_multiple_of_block():
    with pytest.raises(ValueError, match="--seq-length 10 .*--block-size 4"):
        collate_student([([1], [1])], seq_len=10, block_size=4, eos_id=2, pad_id=0)

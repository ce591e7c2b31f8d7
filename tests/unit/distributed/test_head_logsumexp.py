"""The LM head's blocked online logsumexp against torch's logsumexp over materialised logits."""

import pytest
import torch

from tide_megatron.distributed import vocab_parallel
from tide_megatron.distributed.vocab_parallel import head_logsumexp_and_target


@pytest.mark.parametrize("rows, elements", [(None, 1 << 20), (7, 200), (1, 64)])
def test_blocks_of_rows_and_vocabulary_give_torch_logsumexp(monkeypatch, rows, elements):
    monkeypatch.setattr(vocab_parallel, "HEAD_BLOCK_ELEMENTS", elements)  # 200 // 7 -> 64-column blocks of 300
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(23, 16, generator=gen) * 3  # spread logits: the running max changes between blocks
    weight = torch.randn(300, 16, generator=gen)
    targets = torch.randint(0, 300, (23,), generator=gen)
    logits = hidden @ weight.t()
    lse, picked = head_logsumexp_and_target(hidden, weight, None, targets, block_rows=rows)
    assert lse.dtype == picked.dtype == torch.float32
    torch.testing.assert_close(lse, torch.logsumexp(logits.double(), -1).float(), rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(picked, logits.gather(1, targets[:, None]).squeeze(1), rtol=1e-6, atol=1e-5)
    lse_only, none = head_logsumexp_and_target(hidden, weight, None, block_rows=rows)
    assert none is None and torch.equal(lse_only, lse)


def test_bf16_blocks_reduce_in_fp32():
    gen = torch.Generator().manual_seed(1)
    hidden, weight = torch.randn(9, 16, generator=gen).bfloat16(), torch.randn(100, 16, generator=gen).bfloat16()
    lse, _ = head_logsumexp_and_target(hidden, weight, None)
    assert lse.dtype == torch.float32
    torch.testing.assert_close(lse, torch.logsumexp((hidden @ weight.t()).float(), -1), rtol=1e-6, atol=1e-5)


def test_no_rows():
    lse, picked = head_logsumexp_and_target(torch.zeros(0, 8), torch.randn(10, 8), None, torch.zeros(0, dtype=torch.long))
    assert lse.shape == picked.shape == (0,)

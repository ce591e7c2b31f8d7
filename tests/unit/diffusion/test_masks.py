"""Block-diffusion mask against the spec's 8x8 test vectors (§11.4) and its defining rules (§1.4)."""

import pytest
import torch

from tide_megatron.diffusion.masks import block_causal_mask, block_diffusion_mask

XT_X0 = """
11000000
11000000
00111100
00111100
00001100
00001100
00001111
00001111"""

X0_XT = """
11000000
11000000
11110000
11110000
00001100
00001100
11000011
11000011"""


def _parse(text: str) -> torch.Tensor:
    return torch.tensor([[c == "1" for c in row] for row in text.split()], dtype=torch.bool)


@pytest.mark.parametrize("order,expected", [("xt_x0", XT_X0), ("x0_xt", X0_XT)])
def test_mask_equals_spec_vectors(order, expected):
    assert torch.equal(block_diffusion_mask(4, 2, order), _parse(expected))


def test_mask_rules_at_larger_size():
    L, B = 12, 4
    m = block_diffusion_mask(L, B, "xt_x0")
    for q in range(2 * L):
        for k in range(2 * L):
            q_x0, k_x0, bq, bk = q >= L, k >= L, (q % L) // B, (k % L) // B
            rule = (q_x0 == k_x0 and bq == bk) or (not q_x0 and k_x0 and bk < bq) or (q_x0 and k_x0 and bk <= bq)
            assert bool(m[q, k]) == rule
    # x0-first is the same mask with both halves swapped.
    perm = torch.cat([torch.arange(L, 2 * L), torch.arange(L)])
    assert torch.equal(block_diffusion_mask(L, B, "x0_xt"), m[perm][:, perm])


def test_block_causal_and_bad_sizes():
    assert torch.equal(block_causal_mask(4, 2), _parse("1100 1100 1111 1111"))
    with pytest.raises(ValueError, match="block_size"):
        block_diffusion_mask(6, 4)
    with pytest.raises(ValueError, match="order"):
        block_diffusion_mask(4, 2, "xt_first")

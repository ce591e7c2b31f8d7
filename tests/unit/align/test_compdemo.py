"""CompDemo split and merge (§4): spec vector §11.10 and the chunk-level variant."""

import pytest
import torch

from tide_megatron.align.masking import project_mask_through_pairs
from tide_megatron.align.compdemo import merge, plan_chunk_level, plan_token_level, split


def test_token_level_vector_11_10():
    masked = torch.tensor([[False, True, True, False, True, True]])
    u = torch.tensor([[0.99, 0.3, 0.7, 0.0, 0.1, 0.9]])
    m_a, m_b = split(masked, 0.5, u)
    assert m_a.nonzero()[:, 1].tolist() == [1, 4] and m_b.nonzero()[:, 1].tolist() == [2, 5]
    idx = torch.arange(6).unsqueeze(0)
    plan = plan_token_level(masked, idx, idx, torch.ones(1, 6, dtype=torch.bool), 6, 0.5, u)
    assert plan.two_pass
    assert plan.passes[0].nonzero()[:, 1].tolist() == [2, 5]
    assert plan.passes[1].nonzero()[:, 1].tolist() == [1, 4]
    pass1 = torch.full((1, 6, 3), 1.0)
    pass2 = torch.full((1, 6, 3), 2.0)
    merged = merge(pass1, pass2, plan.take_pass2)
    assert merged[0, :, 0].tolist() == [1, 2, 1, 1, 2, 1]
    assert pass1.eq(1).all()  # not in place by default
    rows = merge(pass1[0], pass2[0], plan.take_pass2[0], inplace=True)
    assert rows.data_ptr() == pass1.data_ptr() and pass1[0, :, 0].tolist() == [1, 2, 1, 1, 2, 1]


def test_unpaired_positions_masked_in_neither_pass():
    masked = torch.tensor([[True, True, True]])
    u = torch.tensor([[0.1, 0.8, 0.2]])
    # Student 0 -> teacher 4, student 1 -> teacher 2, student 2 unpaired (its pair slot is padding).
    ps, pt = torch.tensor([[0, 1, 0]]), torch.tensor([[4, 2, 0]])
    valid = torch.tensor([[True, True, False]])
    plan = plan_token_level(masked, ps, pt, valid, 5, 0.5, u)
    assert plan.passes[0].tolist() == [[False, False, True, False, False]]
    assert plan.passes[1].tolist() == [[False, False, False, False, True]]
    assert not project_mask_through_pairs(masked, ps, pt, valid, 5)[0, 0]  # padded pair never scatters to index 0


def test_no_masked_positions_single_pass():
    masked = torch.zeros(2, 4, dtype=torch.bool)
    idx = torch.arange(4).expand(2, 4)
    plan = plan_token_level(masked, idx, idx, torch.ones(2, 4, dtype=torch.bool), 4)
    assert not plan.two_pass and plan.take_pass2 is None and not plan.passes[0].any()


def test_split_is_bernoulli_not_exact_half():
    g = torch.Generator().manual_seed(0)
    masked = torch.rand(64, 64, generator=g) < 0.5
    m_a, m_b = split(masked, 0.5, generator=g)
    assert not (m_a & m_b).any() and torch.equal(m_a | m_b, masked)
    frac = m_a.sum().item() / masked.sum().item()
    assert 0.45 < frac < 0.55
    per_row = m_a.sum(1) - m_b.sum(1)
    assert (per_row != 0).any()  # sizes differ per sample


def test_chunk_level():
    has_masked = torch.tensor([[True, False, True, True]])
    u = torch.tensor([[0.2, 0.1, 0.9, 0.4]])
    teacher_chunk = torch.tensor([[-1, 0, 0, 1, 2, 2, 3, -1]])
    plan = plan_chunk_level(has_masked, teacher_chunk, 0.5, u)
    # C_A = {0, 3}, C_B = {2}; chunk 1 has no mask and is masked in neither pass.
    assert plan.passes[0].tolist() == [[False, False, False, False, True, True, False, False]]
    assert plan.passes[1].tolist() == [[False, True, True, False, False, False, True, False]]
    assert torch.equal(plan.take_pass2, plan.passes[1])


def test_bad_input_raises():
    with pytest.raises(ValueError, match="demo_ratio"):
        split(torch.ones(1, 2, dtype=torch.bool), 1.5)
    with pytest.raises(ValueError, match="take_pass2"):
        merge(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(3, dtype=torch.bool))

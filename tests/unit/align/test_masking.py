"""Chunk-consistent masking and active chunks (§5.5, §11.10), pair projection and CompDemo projections (§2.4, §4)."""

import pytest
import torch

from tide_megatron.align.masking import (
    chunk_any,
    chunk_consistent_masking,
    project_chunk_set,
    project_mask_through_pairs,
)


def _ids(L, spans):
    out = torch.full((L,), -1, dtype=torch.long)
    for c, (a, b) in enumerate(spans):
        out[a:b] = c
    return out


def test_spec_11_10_chunk_masking():
    # c0: teacher [0,2) <-> student [0,1); c1: teacher [2,3) <-> student [1,3); student position 2 sampled
    s_chunk = _ids(3, [(0, 1), (1, 3)]).unsqueeze(0)
    t_chunk = _ids(3, [(0, 2), (2, 3)]).unsqueeze(0)
    labels = torch.tensor([[5, 6, 7]])
    mask = torch.tensor([[False, False, True]])
    cm = chunk_consistent_masking(mask, s_chunk, t_chunk, labels)
    assert cm.student_mask.tolist() == [[False, True, True]]
    assert cm.teacher_mask.tolist() == [[False, False, True]]
    assert cm.active.tolist() == [[False, True]]
    assert cm.has_masked.tolist() == [[False, True]]


def test_prompt_tokens_never_masked_and_prompt_chunks_never_active():
    # chunk 0 spans a prompt token (label -100) and a response token that is sampled
    s_chunk = torch.tensor([[0, 0, 1, -1]])
    t_chunk = torch.tensor([[0, 1, 1, -1, -1]])
    labels = torch.tensor([[-100, 4, 5, 6]])
    mask = torch.tensor([[False, True, False, True]])
    cm = chunk_consistent_masking(mask, s_chunk, t_chunk, labels)
    assert cm.student_mask.tolist() == [[False, True, False, True]]  # prompt token 0 stays clean
    assert cm.teacher_mask.tolist() == [[True, False, False, False, False]]  # teacher side of chunk 0 masked
    assert cm.active.tolist() == [[False, False]]  # chunk 0 touches the prompt; chunk 1 has no mask


def _dense_reference(mask, s_chunk, t_chunk, labels, C):
    """§5.5 written with dense A_s, A_t matrices exactly as the spec states it."""
    b, L = mask.shape
    A_s = torch.zeros(b, L, C, dtype=torch.bool)
    A_t = torch.zeros(b, t_chunk.shape[1], C, dtype=torch.bool)
    for k in range(b):
        for j in range(L):
            if s_chunk[k, j] >= 0:
                A_s[k, j, s_chunk[k, j]] = True
        for i in range(t_chunk.shape[1]):
            if t_chunk[k, i] >= 0:
                A_t[k, i, t_chunk[k, i]] = True
    maskable = labels != -100
    has_m = (A_s & mask.unsqueeze(2)).any(1)
    m = mask | (maskable & (A_s & has_m.unsqueeze(1)).any(2))
    tm = (A_t & has_m.unsqueeze(1)).any(2)
    has_p = (A_s & (~maskable).unsqueeze(2)).any(1)
    return m, tm, has_m & ~has_p


def test_random_batches_match_dense_reference():
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        b, L, Lt, C = 3, 40, 50, 12
        s_chunk = torch.full((b, L), -1, dtype=torch.long)
        t_chunk = torch.full((b, Lt), -1, dtype=torch.long)
        for k in range(b):
            cs = ct = 2
            for c in range(int(torch.randint(0, C + 1, (), generator=g))):
                ws, wt = int(torch.randint(1, 4, (), generator=g)), int(torch.randint(1, 4, (), generator=g))
                if cs + ws > L or ct + wt > Lt:
                    break
                s_chunk[k, cs:cs + ws] = c
                t_chunk[k, ct:ct + wt] = c
                cs, ct = cs + ws, ct + wt
        labels = torch.randint(0, 100, (b, L), generator=g)
        labels[:, :int(torch.randint(0, 10, (), generator=g))] = -100
        mask = (torch.rand(b, L, generator=g) < 0.3) & (labels != -100)
        cm = chunk_consistent_masking(mask, s_chunk, t_chunk, labels, num_cols=C)
        m, tm, act = _dense_reference(mask, s_chunk, t_chunk, labels, C)
        assert torch.equal(cm.student_mask, m) and torch.equal(cm.teacher_mask, tm) and torch.equal(cm.active, act)


def test_chunk_any_ignores_unaligned_tokens():
    out = chunk_any(torch.tensor([[-1, 0, 2]]), torch.tensor([[True, False, True]]), 3)
    assert out.tolist() == [[False, False, True]]


def test_pair_projection_scatters_only_valid_pairs():
    student_mask = torch.tensor([[False, True, True, False, True, True]])
    # pairs (student -> teacher); the last pair is padding pointing at teacher 0 with a masked student index
    ps = torch.tensor([[1, 2, 4, 5, 1]])
    pt = torch.tensor([[3, 4, 6, 7, 0]])
    valid = torch.tensor([[True, True, True, False, False]])
    tm = project_mask_through_pairs(student_mask, ps, pt, valid, teacher_len=9)
    assert tm.nonzero()[:, 1].tolist() == [3, 4, 6]  # 5 has no valid partner; padding never touches index 0


def test_spec_11_10_compdemo_split_through_pairs():
    # masked student {1,2,4,5}; u = [., 0.3, 0.7, ., 0.1, 0.9], ratio 0.5 -> M_A = {1,4}, M_B = {2,5}
    mask = torch.tensor([[False, True, True, False, True, True]])
    u = torch.tensor([[0.99, 0.3, 0.7, 0.99, 0.1, 0.9]])
    m_a = mask & (u < 0.5)
    m_b = mask & ~m_a
    assert m_a.nonzero()[:, 1].tolist() == [1, 4] and m_b.nonzero()[:, 1].tolist() == [2, 5]
    # identity pairs (shared tokenizer, teacher offset by 2 template tokens)
    ps = torch.arange(6).unsqueeze(0)
    pt = ps + 2
    valid = torch.ones(1, 6, dtype=torch.bool)
    pass1_masked = project_mask_through_pairs(m_b, ps, pt, valid, 8)  # pass 1 masks M_B
    pass2_masked = project_mask_through_pairs(m_a, ps, pt, valid, 8)  # pass 2 masks M_A
    assert pass1_masked.nonzero()[:, 1].tolist() == [4, 7]
    assert pass2_masked.nonzero()[:, 1].tolist() == [3, 6]


def test_chunk_set_projection_for_chunk_level_compdemo():
    t_chunk = torch.tensor([[-1, 0, 0, 1, 2, 2, -1]])
    in_a = torch.tensor([[True, False, True]])
    assert project_chunk_set(t_chunk, in_a).tolist() == [[False, True, True, False, True, True, False]]
    assert project_chunk_set(t_chunk, torch.zeros(1, 0, dtype=torch.bool)).sum() == 0


def test_pair_projection_rejects_mismatched_pair_shapes():
    ps, pt = torch.zeros(1, 3, dtype=torch.long), torch.zeros(1, 2, dtype=torch.long)
    with pytest.raises(ValueError, match="pair_student, pair_teacher and pair_valid"):
        project_mask_through_pairs(torch.ones(1, 3, dtype=torch.bool), ps, pt, torch.ones(1, 3, dtype=torch.bool), 4)

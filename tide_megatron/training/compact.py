"""Drop the student blocks no loss reads, without changing any value the loss sees (spec §1.4).

In ``[xt ; x0]`` an xt block attends only to itself and to the x0 blocks before it, and x0 blocks attend
only to x0 blocks up to their own. So an xt block without a masked token (prompt, padding, or simply no
mask drawn) feeds no loss and can be left out, and x0 blocks at or after a sequence's last kept xt block
feed nothing either. `compact_student_inputs` packs what remains (xt blocks first, then x0 blocks), with
the original position ids and a per-sequence mask that gives every kept token exactly the keys it had, so
the hidden states of the kept xt rows are those of the full input (up to summation order).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class CompactInputs:
    ids: torch.Tensor  # int64 [b, S]
    position_ids: torch.Tensor  # int64 [b, S]
    mask: torch.Tensor  # bool [b, 1, S, S], True = may attend
    xt_rows: int  # the first xt_rows positions of every sequence are (possibly padded) xt rows
    xt_positions: torch.Tensor  # int64 [b, xt_rows]: original position of each xt row, -1 = padding


def compact_student_inputs(xt: torch.Tensor, x0: torch.Tensor, masked: torch.Tensor, block_size: int,
                           pad_id: int) -> CompactInputs:
    """Pack the needed blocks of ``[xt ; x0]`` (``[b, L]`` each) per sequence; see the module docstring."""
    b, L = x0.shape
    nblk = L // block_size
    keep_xt = masked.view(b, nblk, block_size).any(-1)  # [b, nblk]
    blk_idx = torch.arange(nblk)
    last = torch.where(keep_xt, blk_idx, -1).amax(-1)  # last kept xt block per sequence (-1: none)
    keep_x0 = blk_idx[None, :] < last[:, None]  # x0 blocks strictly before it
    n_xt = int(keep_xt.sum(-1).max()) * block_size
    n_x0 = int(keep_x0.sum(-1).max()) * block_size
    S = max(1, n_xt + n_x0)
    ids = torch.full((b, S), pad_id, dtype=x0.dtype)
    pos = torch.zeros((b, S), dtype=torch.long)
    seg = torch.full((b, S), -1, dtype=torch.long)  # 0 = xt, 1 = x0, -1 = padding
    blk = torch.full((b, S), -1, dtype=torch.long)
    xt_positions = torch.full((b, n_xt), -1, dtype=torch.long)
    offsets = torch.arange(block_size)
    for i in range(b):
        xb = blk_idx[keep_xt[i]]
        ob = blk_idx[keep_x0[i]]
        xp = (xb[:, None] * block_size + offsets).reshape(-1)
        op = (ob[:, None] * block_size + offsets).reshape(-1)
        nx, no = xp.numel(), op.numel()
        ids[i, :nx], ids[i, n_xt:n_xt + no] = xt[i, xp], x0[i, op]
        pos[i, :nx], pos[i, n_xt:n_xt + no] = xp, op
        seg[i, :nx], seg[i, n_xt:n_xt + no] = 0, 1
        blk[i, :nx], blk[i, n_xt:n_xt + no] = xp // block_size, op // block_size
        xt_positions[i, :nx] = xp
    # Segment codes of `segment_block_mask`: x0 = 0, the (single) xt half = 1.
    seg = torch.where(seg == 0, 1, torch.where(seg == 1, 0, seg))
    return CompactInputs(ids=ids, position_ids=pos, mask=segment_block_mask(seg, blk)[:, None], xt_rows=n_xt,
                         xt_positions=xt_positions)


def segment_block_mask(seg: torch.Tensor, blk: torch.Tensor, key_valid: torch.Tensor | None = None) -> torch.Tensor:
    """bool ``[b, S, S]`` from per-token segment (-1 padding, 0 = x0, p >= 1 = the xt half of pass p) and
    original block ids: x0 sees x0 blocks up to its own; xt_p sees x0 blocks before its own and its own block
    of xt_p, never another pass (§1.4, §2.2). Padding queries see only themselves, so no row is empty."""
    q_seg, k_seg = seg[:, :, None], seg[:, None, :]
    q_blk, k_blk = blk[:, :, None], blk[:, None, :]
    x0_to_x0 = (q_seg == 0) & (k_seg == 0) & (k_blk <= q_blk)  # M_BD + M_BC in x0
    xt_to_x0 = (q_seg > 0) & (k_seg == 0) & (k_blk < q_blk)  # M_OBC
    same_xt_block = (q_seg > 0) & (k_seg == q_seg) & (q_blk == k_blk)  # M_BD in one pass's xt
    allowed = x0_to_x0 | xt_to_x0 | same_xt_block
    if key_valid is not None:
        allowed &= key_valid[:, None, :]
    S = seg.shape[1]
    allowed |= torch.eye(S, dtype=torch.bool, device=seg.device)[None] & (seg[:, :, None] < 0)
    return allowed


@dataclass
class CompactTeacher:
    ids: torch.Tensor  # int64 [b, S]: [x0 kept blocks ; xt_1 kept blocks ; ... ] per sequence, padded
    position_ids: torch.Tensor  # int64 [b, S]
    segment: torch.Tensor  # int64 [b, S]: -1 padding, 0 = x0, p = xt of pass p
    block: torch.Tensor  # int64 [b, S]: original block id
    index: torch.Tensor  # int64 [P, b, L]: compact column of xt position (pass p, seq, pos), -1 if dropped


def compact_teacher_inputs(x0: torch.Tensor, xts: torch.Tensor, need: torch.Tensor, block_size: int,
                           pad_id: int) -> CompactTeacher:
    """The x0-first teacher input of every pass in one sequence, keeping only the xt blocks in ``need``
    (bool ``[P, b, nblk]``: blocks holding a requested row) and the x0 blocks before the last of them."""
    P, b, L = xts.shape
    nblk = L // block_size
    blk_idx = torch.arange(nblk)
    offsets = torch.arange(block_size)
    last = torch.where(need, blk_idx, -1).amax(-1).amax(0)  # [b]: last needed xt block over all passes
    keep_x0 = blk_idx[None, :] < last[:, None]
    lengths = (keep_x0.sum(-1) + need.sum(-1).sum(0)) * block_size
    S = max(1, int(lengths.max()))
    ids = torch.full((b, S), pad_id, dtype=x0.dtype)
    pos = torch.zeros((b, S), dtype=torch.long)
    seg = torch.full((b, S), -1, dtype=torch.long)
    blk = torch.full((b, S), -1, dtype=torch.long)
    index = torch.full((P, b, L), -1, dtype=torch.long)
    for i in range(b):
        parts = [(0, x0[i], blk_idx[keep_x0[i]])] + [(p + 1, xts[p, i], blk_idx[need[p, i]]) for p in range(P)]
        col = 0
        for code, source, blocks in parts:
            positions = (blocks[:, None] * block_size + offsets).reshape(-1)
            n = positions.numel()
            ids[i, col:col + n] = source[positions]
            pos[i, col:col + n] = positions
            seg[i, col:col + n] = code
            blk[i, col:col + n] = positions // block_size
            if code > 0:
                index[code - 1, i, positions] = torch.arange(col, col + n)
            col += n
    return CompactTeacher(ids=ids, position_ids=pos, segment=seg, block=blk, index=index)


def scatter_xt_rows(hidden_xt: torch.Tensor, xt_positions: torch.Tensor, L: int) -> torch.Tensor:
    """Put the kept xt rows ``[b, xt_rows, h]`` back at their positions of a ``[b, L, h]`` tensor (zeros
    elsewhere: those rows carry no loss), differentiably."""
    b, _, h = hidden_xt.shape
    valid = xt_positions >= 0
    rows, cols = valid.nonzero(as_tuple=True)
    out = hidden_xt.new_zeros(b, L, h)
    return out.index_put((rows, xt_positions[rows, cols]), hidden_xt[rows, cols])

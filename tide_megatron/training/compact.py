"""Drop the student blocks no loss reads, without changing any value the loss sees (spec §1.4).

(The teacher's counterpart, one ``[x0 ; xt_1 ; xt_2]`` sequence of the needed blocks, is in ``teacher/passes.py``.)

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

from tide_megatron.models.attention_mask import BlockDiffusionMask


@dataclass
class CompactInputs:
    ids: torch.Tensor  # int64 [b, S]
    position_ids: torch.Tensor  # int64 [b, S]
    mask: BlockDiffusionMask  # the §1.4 rule over the kept blocks (dense: bool [b, 1, S, S], True = may attend)
    xt_rows: int  # the first xt_rows positions of every sequence are (possibly padded) xt rows
    xt_positions: torch.Tensor  # int64 [b, xt_rows]: original position of each xt row, -1 = padding


def compact_student_inputs(xt: torch.Tensor, x0: torch.Tensor, masked: torch.Tensor, block_size: int,
                           pad_id: int) -> CompactInputs:
    """Pack the needed blocks of ``[xt ; x0]`` (``[b, L]`` each) per sequence; see the module docstring."""
    b, L = x0.shape
    nblk = L // block_size
    dev = x0.device
    keep_xt = masked.view(b, nblk, block_size).any(-1)  # [b, nblk]
    blk_idx = torch.arange(nblk, device=dev)
    last = torch.where(keep_xt, blk_idx, -1).amax(-1)  # last kept xt block per sequence (-1: none)
    keep_x0 = blk_idx[None, :] < last[:, None]  # x0 blocks strictly before it
    n_xt = int(keep_xt.sum(-1).max()) * block_size
    n_x0 = int(keep_x0.sum(-1).max()) * block_size
    S = max(1, n_xt + n_x0)
    ids = torch.full((b, S), pad_id, dtype=x0.dtype, device=dev)
    pos = torch.zeros((b, S), dtype=torch.long, device=dev)
    seg = torch.full((b, S), -1, dtype=torch.long, device=dev)  # 0 = xt, 1 = x0, -1 = padding
    blk = torch.full((b, S), -1, dtype=torch.long, device=dev)
    xt_positions = torch.full((b, n_xt), -1, dtype=torch.long, device=dev)
    offsets = torch.arange(block_size, device=dev)
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
    # Segment codes of `BlockDiffusionMask`: x0 = 0, the (single) xt half = 1.
    seg = torch.where(seg == 0, 1, torch.where(seg == 1, 0, seg))
    return CompactInputs(ids=ids, position_ids=pos, mask=BlockDiffusionMask(seg, blk), xt_rows=n_xt,
                         xt_positions=xt_positions)


def scatter_xt_rows(hidden_xt: torch.Tensor, xt_positions: torch.Tensor, L: int) -> torch.Tensor:
    """Put the kept xt rows ``[b, xt_rows, h]`` back at their positions of a ``[b, L, h]`` tensor (zeros
    elsewhere: those rows carry no loss), differentiably."""
    b, _, h = hidden_xt.shape
    valid = xt_positions >= 0
    rows, cols = valid.nonzero(as_tuple=True)
    out = hidden_xt.new_zeros(b, L, h)
    return out.index_put((rows, xt_positions[rows, cols]), hidden_xt[rows, cols])

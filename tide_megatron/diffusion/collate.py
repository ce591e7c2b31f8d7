"""Student collation of spec §1.2: trained eos fill to a block multiple, then fixed padding."""

from __future__ import annotations

from typing import Sequence

import torch

from tide_megatron.diffusion.masks import check_block_multiple
from tide_megatron.diffusion.noise import IGNORE_INDEX


def collate_student(samples: Sequence[tuple[Sequence[int], Sequence[int]]], seq_len: int, block_size: int,
                    eos_id: int, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[(ids, labels)] -> (input_ids [b, seq_len], labels [b, seq_len]), int64.

    Order matters (§1.2.3): right-truncate to seq_len; append eos (label = eos, so trained) until the
    length is a multiple of block_size; right-pad with pad_id (label -100). Padding thus starts on a
    block boundary and never shares a block with content.
    """
    check_block_multiple(seq_len, block_size)
    ids_out = torch.full((len(samples), seq_len), pad_id, dtype=torch.long)
    labels_out = torch.full((len(samples), seq_len), IGNORE_INDEX, dtype=torch.long)
    for row, (ids, labels) in enumerate(samples):
        if len(ids) != len(labels):
            raise ValueError(f"sample {row}: ids ({len(ids)}) and labels ({len(labels)}) differ in length")
        ids, labels = list(ids[:seq_len]), list(labels[:seq_len])
        fill = -len(ids) % block_size
        ids += [eos_id] * fill
        labels += [eos_id] * fill
        ids_out[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        labels_out[row, : len(labels)] = torch.tensor(labels, dtype=torch.long)
    return ids_out, labels_out

"""Payload exchange inside a teacher TP group of 2 ranks (DESIGN §2), against single-process slicing."""

import torch
import torch.distributed as dist

from tide_megatron.distributed.payload_exchange import (gather_teacher_inputs, own_rows, own_sequences, row_counts,
                                                         vocab_shards_to_own_rows)


def _rank_batch(rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    b, L = (2, 5) if rank == 0 else (3, 7)
    g = torch.Generator().manual_seed(10 + rank)
    return torch.randint(1, 50, (b, L), generator=g), torch.ones(b, L, dtype=torch.bool)


def test_gather_runs_once_and_each_rank_gets_its_own_sequences():
    rank = dist.get_rank()
    ids, att = _rank_batch(rank)
    gathered, info = gather_teacher_inputs({"ids": ids, "att": att}, {"ids": 0, "att": False}, dist.group.WORLD)
    ids0, _ = _rank_batch(0)
    ids1, _ = _rank_batch(1)
    assert gathered["ids"].shape == (5, 7)
    assert torch.equal(gathered["ids"][:2, :5], ids0) and torch.equal(gathered["ids"][2:, :7], ids1)
    assert not gathered["att"][:2, 5:].any() and gathered["att"][2:].all()
    # A per-position payload computed once on the gathered batch (identical on both ranks) ...
    payload = gathered["ids"].float() * 0.5
    mine = own_sequences(payload, info)
    assert torch.equal(mine, ids.float() * 0.5)


def test_vocab_parallel_rows_come_back_full_for_own_positions():
    rank = dist.get_rank()
    n_own = 3 if rank == 0 else 2
    counts = row_counts(n_own, dist.group.WORLD)
    assert counts == [3, 2]
    V = 8
    full = torch.arange(sum(counts) * V, dtype=torch.float32).view(sum(counts), V)  # the teacher's rows, all ranks
    local_shard = full[:, rank * V // 2:(rank + 1) * V // 2]  # megatron vocab-parallel slice of this TP rank
    mine = vocab_shards_to_own_rows(local_shard, counts, dist.group.WORLD)
    start = sum(counts[:rank])
    assert torch.equal(mine, full[start:start + n_own])
    assert torch.equal(own_rows(full, counts, dist.group.WORLD), full[start:start + n_own])


def test_own_rows_from_the_last_pipeline_stage_alone():
    """A teacher at TP=1, PP=2: only the last stage (rank 1) holds the rows, every rank receives its own."""
    rank = dist.get_rank()
    counts = row_counts(3 if rank == 0 else 2, dist.group.WORLD)
    full = torch.arange(sum(counts) * 6, dtype=torch.float32).view(sum(counts), 6)
    mine = vocab_shards_to_own_rows(full if rank == 1 else None, counts, dist.group.WORLD, tp_rank=0)
    start = sum(counts[:rank])
    assert torch.equal(mine, full[start:start + counts[rank]])


def test_vocabulary_slices_are_assembled_in_tensor_parallel_order():
    """Group rank and TP rank need not agree (e.g. a TP x PP group): the slices are ordered by TP rank."""
    rank = dist.get_rank()
    counts = row_counts(2 if rank == 0 else 4, dist.group.WORLD)
    V = 10
    full = torch.randn(sum(counts), V, generator=torch.Generator().manual_seed(0))
    tp = 1 - rank  # group rank 0 holds vocabulary slice 1
    mine = vocab_shards_to_own_rows(full[:, tp * V // 2:(tp + 1) * V // 2], counts, dist.group.WORLD, tp_rank=tp)
    start = sum(counts[:rank])
    assert torch.equal(mine, full[start:start + counts[rank]])

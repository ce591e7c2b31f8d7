"""Resumable, data-parallel batching over a map-style dataset of TIDE samples.

Each epoch is a seeded permutation of the dataset, cut into global batches of ``dp x micro_batch``
samples; data-parallel rank r takes slot r of each. The data position saved in a checkpoint is the
number of micro-batches this rank has consumed, so a resumed run continues with exactly the batch it
would have seen next, and every batch carries its own noise seed (``training/batch.py``).
"""

from __future__ import annotations

from typing import Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from tide_megatron.training.batch import DistillBatch, DistillCollator


class ListDataset(Dataset):
    """Samples held in memory (held-out sets, tests, small corpora)."""

    def __init__(self, samples: Sequence[dict]) -> None:
        self.samples = list(samples)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        return self.samples[index]


class ResumableBatches:
    """The micro-batches of one data-parallel rank, as (batch_seed, sample indices), from any position."""

    def __init__(self, num_samples: int, micro_batch_size: int, dp_rank: int, dp_size: int, seed: int,
                 shuffle: bool = True) -> None:
        self.n, self.mbs, self.rank, self.dp, self.seed, self.shuffle = (
            num_samples, micro_batch_size, dp_rank, dp_size, seed, shuffle)
        if self.per_epoch < 1:
            raise ValueError(f"data: {num_samples} samples are fewer than one global batch "
                             f"(data.micro_batch_size={micro_batch_size} x {dp_size} data-parallel ranks)")

    @property
    def per_epoch(self) -> int:
        """Micro-batches per epoch for each rank (the incomplete last global batch is dropped)."""
        return self.n // (self.mbs * self.dp)

    def _order(self, epoch: int) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(self.n)
        return torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 1000003 + epoch))

    def batch_at(self, position: int) -> tuple[int, list[int]]:
        """The ``position``-th micro-batch of this rank (0-based, across epochs)."""
        epoch, k = divmod(position, self.per_epoch)
        order = self._order(epoch)
        start = (k * self.dp + self.rank) * self.mbs
        batch_seed = (self.seed * 7919 + epoch * 104729 + k * self.dp + self.rank) % (2**63 - 1)
        return batch_seed, order[start: start + self.mbs].tolist()

    def iterate(self, start: int, stop: int) -> Iterator[tuple[int, list[int]]]:
        for position in range(start, stop):
            yield self.batch_at(position)


class _SeededItems(Dataset):
    """Maps a (batch_seed, indices) request to the list of (seed, sample) pairs the collator takes."""

    def __init__(self, dataset: Dataset, requests: list[tuple[int, list[int]]]) -> None:
        self.dataset, self.requests = dataset, requests

    def __len__(self) -> int:
        return len(self.requests)

    def __getitem__(self, i: int) -> list[tuple[int, dict]]:
        seed, indices = self.requests[i]
        return [(seed, self.dataset[j]) for j in indices]



class _Collate:
    def __init__(self, collator: DistillCollator) -> None:
        self.collator = collator

    def __call__(self, batch: list[list[tuple[int, dict]]]) -> DistillBatch:
        return self.collator(batch[0])


def micro_batch_loader(dataset: Dataset, batches: ResumableBatches, collator: DistillCollator, start: int,
                       stop: int, num_workers: int = 0, prefetch_factor: int = 2) -> DataLoader:
    """A DataLoader yielding this rank's micro-batches ``start .. stop-1``; collation + noising in workers."""
    requests = list(batches.iterate(start, stop))
    kwargs = {"num_workers": num_workers}
    if num_workers > 0:
        kwargs.update(prefetch_factor=prefetch_factor, persistent_workers=False)
    return DataLoader(_SeededItems(dataset, requests), batch_size=1, shuffle=False,
                      collate_fn=_Collate(collator), **kwargs)

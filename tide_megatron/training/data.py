"""Resumable, data-parallel batching over a ``tide-preprocess`` dataset, with the alignment stage in workers.

Each epoch is a seeded permutation of the dataset, cut into global batches of ``dp x micro_batch``
samples; data-parallel rank r takes slot r of each. The data position saved in a checkpoint is the
number of micro-batches this rank has consumed; the stage's noise is seeded by (seed, epoch, sample
index), so a resumed run sees exactly the batches, and the masks, it would have seen.
"""

from __future__ import annotations

import atexit
import weakref
from typing import Iterator, Optional, Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from tide_megatron.data.batch import DistillBatch
from tide_megatron.data.stage import TideCollator
from tide_megatron.distributed.lifetime import make_helper


class ListDataset(Dataset):
    """Samples held in memory, in ``TideAlignedDataset``'s item format, with the same ``meta``."""

    def __init__(self, samples: Sequence[dict], meta: dict) -> None:
        self.samples = list(samples)
        self.meta = meta

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        return {**self.samples[index], "index": torch.tensor(index, dtype=torch.int64)}


class ResumableBatches:
    """The micro-batches (lists of sample indices) of one data-parallel rank, from any position."""

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

    def epoch_of(self, position: int) -> int:
        return position // self.per_epoch

    def batch_at(self, position: int, order: Optional[torch.Tensor] = None) -> list[int]:
        """The ``position``-th micro-batch of this rank (0-based, counted across epochs)."""
        epoch, k = divmod(position, self.per_epoch)
        order = self._order(epoch) if order is None else order
        start = (k * self.dp + self.rank) * self.mbs
        return order[start: start + self.mbs].tolist()

    def segments(self, start: int, stop: int) -> Iterator[tuple[int, list[list[int]]]]:
        """``(epoch, micro-batches)`` for positions ``start .. stop-1``, one segment per epoch."""
        position = start
        while position < stop:
            epoch = self.epoch_of(position)
            end = min(stop, (epoch + 1) * self.per_epoch)
            order = self._order(epoch)
            yield epoch, [self.batch_at(p, order) for p in range(position, end)]
            position = end


_OPEN_ITERATORS: weakref.WeakSet = weakref.WeakSet()  # loader iterators whose workers may still run


def _init_worker(worker_id: int) -> None:
    """Workers leave SIGTERM/SIGUSR1 to the trainer (SLURM signals every process of the job: the main process
    checkpoints at the next step boundary and stops the workers itself) and die with it if it is killed."""
    make_helper()


def _stop_workers(iterator) -> None:
    """Stop a loader iterator's workers now: DataLoader's own shutdown, then SIGKILL for any still alive.

    Needed because the workers ignore SIGTERM: if an error leaves an iterator unfinished, multiprocessing's
    exit handler would SIGTERM them and then wait for them forever.
    """
    _OPEN_ITERATORS.discard(iterator)
    shutdown = getattr(iterator, "_shutdown_workers", None)
    if shutdown is not None:
        shutdown()
    for worker in getattr(iterator, "_workers", ()):
        if worker.is_alive():
            worker.kill()
            worker.join(timeout=5)


@atexit.register  # runs before torch's own exit hook (registered earlier), while DataLoader shutdown still works
def _stop_all_workers() -> None:
    for iterator in list(_OPEN_ITERATORS):
        _stop_workers(iterator)


def micro_batches(dataset: Dataset, batches: ResumableBatches, collator: TideCollator, start: int, stop: int,
                  num_workers: int = 0, prefetch_factor: int = 2) -> Iterator[DistillBatch]:
    """This rank's micro-batches ``start .. stop-1``; collation, noising and alignment run in the workers.

    Closing the generator (or leaving it by an error) stops the workers at once.
    """
    for epoch, index_lists in batches.segments(start, stop):
        collator.set_epoch(epoch)
        kwargs = {"num_workers": num_workers}
        if num_workers > 0:
            kwargs.update(prefetch_factor=prefetch_factor, persistent_workers=False, worker_init_fn=_init_worker)
        iterator = iter(DataLoader(dataset, batch_sampler=index_lists, collate_fn=collator, **kwargs))
        if num_workers > 0:
            _OPEN_ITERATORS.add(iterator)
        try:
            for out in iterator:
                yield DistillBatch.from_stage(out)
        finally:
            if num_workers > 0:
                _stop_workers(iterator)

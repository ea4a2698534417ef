"""Loaders: the standard DataLoader path and the fast device-resident path, with one shared sample order.

Both read the epoch's order from :func:`epoch_permutation` (seed, epoch), so without augmentation they yield the
same batches. The fast path keeps the whole split as one uint8 tensor on the training device and augments whole
batches there (the approach of the fastest CIFAR-10 trainers). It shards like Accelerate's prepared DataLoader:
global batch t is ``order[t*B:(t+1)*B]``, and process r takes the r-th contiguous slice of it, so an N-process
run sees the same global batches as a 1-process run.
"""
from __future__ import annotations

from typing import Callable, Iterator, Optional, Tuple

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..seeding import stream_seed
from .base import TensorImageDataset, to_float
from .transforms import batch_augment, check_augmentation

__all__ = ['epoch_permutation', 'SeededSampler', 'DeviceLoader', 'standard_loader']


def epoch_permutation(n: int, seed: int, epoch: int, shuffle: bool = True) -> torch.Tensor:
    """The sample order of one epoch: a permutation seeded by (seed, epoch), or 0..n-1 without shuffling."""
    if not shuffle:
        return torch.arange(n)
    g = torch.Generator().manual_seed(stream_seed('data_order', seed, epoch))
    return torch.randperm(n, generator=g)


class SeededSampler(Sampler[int]):
    """Sampler over :func:`epoch_permutation`; ``set_epoch`` is called by Accelerate and the trainer, and passed on to
    ``on_epoch`` (a keyed per-item augmentation that needs the epoch too)."""

    def __init__(self, n: int, seed: int = 0, shuffle: bool = True,
                 on_epoch: Optional[Callable[[int], None]] = None):
        self.n, self.seed, self.shuffle, self.epoch = n, seed, shuffle, 0
        self.on_epoch = on_epoch

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if self.on_epoch is not None:
            self.on_epoch(epoch)

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        return iter(epoch_permutation(self.n, self.seed, self.epoch, self.shuffle).tolist())


def standard_loader(dataset: Dataset, batch_size: int, shuffle: bool, seed: int = 0, drop_last: bool = False,
                    num_workers: int = 0, persistent_workers: bool = True,
                    on_epoch: Optional[Callable[[int], None]] = None) -> DataLoader:
    """A DataLoader in the shared order; Accelerate's ``prepare`` shards it across processes. ``on_epoch`` hears
    each epoch the sampler is set to."""
    return DataLoader(dataset, batch_size=batch_size, sampler=SeededSampler(len(dataset), seed, shuffle, on_epoch),
                      drop_last=drop_last, num_workers=num_workers,
                      persistent_workers=persistent_workers and num_workers > 0, pin_memory=torch.cuda.is_available())


class DeviceLoader:
    """Batches of a :class:`TensorImageDataset` held on ``device``, augmented there in whole batches.

    Args:
        batch_size: per-process batch size (the global batch is ``batch_size * num_processes``).
        augmentation: 'none', 'crop' or 'cifar' (see :mod:`.transforms`).
        seed: order and augmentation seed; augmentation draws from a generator seeded by (seed, epoch, rank).
    """

    def __init__(self, dataset: TensorImageDataset, batch_size: int, shuffle: bool = True, seed: int = 0,
                 augmentation: str = 'none', device: Optional[torch.device] = None, drop_last: bool = True,
                 num_processes: int = 1, process_index: int = 0):
        if not isinstance(dataset, TensorImageDataset):
            raise TypeError('the fast path needs an in-memory dataset (TensorImageDataset); lazy datasets can be '
                            'materialized with .materialize() first.')
        self.device = torch.device(device or 'cpu')
        self.images = dataset.images.to(self.device)
        self.labels = dataset.labels.to(self.device)
        self.dataset = dataset
        self.batch_size = batch_size
        self.shuffle, self.seed, self.drop_last = shuffle, seed, drop_last
        self.augmentation = check_augmentation(augmentation)
        self.num_processes, self.process_index = num_processes, process_index
        self.epoch = 0
        self.skip_batches = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        global_batch = self.batch_size * self.num_processes
        n = len(self.images)
        return n // global_batch if self.drop_last else -(-n // global_batch)

    def _slice(self, order: torch.Tensor, step: int) -> torch.Tensor:
        start = step * self.batch_size * self.num_processes + self.process_index * self.batch_size
        return order[start:start + self.batch_size]

    def __iter__(self) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        order = epoch_permutation(len(self.images), self.seed, self.epoch, self.shuffle).to(self.device)
        gen = torch.Generator(device=self.device)
        gen.manual_seed(stream_seed('augmentation', self.seed, self.epoch, self.process_index))
        skip, self.skip_batches = self.skip_batches, 0
        for step in range(len(self)):
            idx = self._slice(order, step)
            if len(idx) == 0:
                return
            images = self.images[idx]
            images = batch_augment(images, self.augmentation, gen)  # drawn for skipped batches too: same stream
            if step < skip:
                continue
            yield to_float(images), self.labels[idx]

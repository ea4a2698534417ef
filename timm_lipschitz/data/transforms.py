"""Training augmentation, per item (torchvision v2, standard path) or per batch on the device (fast path).

Both implement the same distribution: 'crop' pads 4 zero pixels per side and takes a uniformly random crop of
the original size (9 x 9 offsets); 'cifar' adds a horizontal flip with probability 1/2 (the CIFAR recipe of
He et al.). 'none' leaves images alone (MNIST-like data, where flips change the class).
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torchvision.transforms import v2

from ..errors import UsageError
from ..seeding import stream_seed

__all__ = ['AUGMENTATIONS', 'train_transform', 'batch_augment', 'check_augmentation', 'CROP_PADDING', 'KeyedTransform',
           'apply_transform']

AUGMENTATIONS = ('none', 'crop', 'cifar')
CROP_PADDING = 4


def check_augmentation(augmentation: str) -> str:
    if augmentation not in AUGMENTATIONS:
        raise UsageError(f'augmentation={augmentation!r} is not allowed; choose one of {AUGMENTATIONS}.')
    return augmentation


class KeyedTransform:
    """A per-item transform whose randomness is keyed by (run seed, epoch, item index): the ``item_augmentation``
    stream, drawn in a forked RNG so torch's global generator is left alone. An item's augmentation then depends
    on nothing else (not the order, the batch, the worker or what was trained before), so a resumed run that skips
    the batches it already trained on augments every later item exactly as an uninterrupted run does. The trainer
    sets the epoch (:meth:`set_epoch`) before each epoch's loader is iterated."""

    keyed = True

    def __init__(self, transform: Callable[[torch.Tensor], torch.Tensor], seed: int) -> None:
        self.transform, self.seed, self.epoch = transform, int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __call__(self, img: torch.Tensor, index: int) -> torch.Tensor:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(stream_seed('item_augmentation', self.seed, self.epoch, int(index)))
            return self.transform(img)


def apply_transform(transform: Optional[Callable], img: torch.Tensor, index: int) -> torch.Tensor:
    """A dataset's per-item transform (a keyed one also gets the item's index)."""
    if transform is None:
        return img
    return transform(img, index) if getattr(transform, 'keyed', False) else transform(img)


def train_transform(augmentation: str, input_size: Sequence[int],
                    seed: Optional[int] = None) -> Optional[Callable[[torch.Tensor], torch.Tensor]]:
    """Per-item v2 transform on a uint8 (C, H, W) tensor, or None for 'none'; with ``seed`` a
    :class:`KeyedTransform` (the trainer's DataLoader path: exact on resume)."""
    if check_augmentation(augmentation) == 'none':
        return None
    ops = [v2.RandomCrop(size=tuple(input_size[-2:]), padding=CROP_PADDING)]
    if augmentation == 'cifar':
        ops.append(v2.RandomHorizontalFlip(p=0.5))
    return v2.Compose(ops) if seed is None else KeyedTransform(v2.Compose(ops), seed)


def batch_augment(images: torch.Tensor, augmentation: str, generator: torch.Generator) -> torch.Tensor:
    """The same augmentation for a whole (N, C, H, W) batch at once, on the batch's device."""
    if check_augmentation(augmentation) == 'none':
        return images
    n, c, h, w = images.shape
    p = CROP_PADDING
    dev = images.device
    padded = F.pad(images, (p, p, p, p))
    dy = torch.randint(0, 2 * p + 1, (n,), generator=generator, device=dev)
    dx = torch.randint(0, 2 * p + 1, (n,), generator=generator, device=dev)
    rows = (dy[:, None] + torch.arange(h, device=dev))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w, device=dev))[:, None, None, :]
    batch = torch.arange(n, device=dev)[:, None, None, None]
    chans = torch.arange(c, device=dev)[None, :, None, None]
    out = padded[batch, chans, rows, cols]
    if augmentation == 'cifar':
        flip = torch.rand(n, generator=generator, device=dev) < 0.5
        out = torch.where(flip[:, None, None, None], out.flip(3), out)
    return out

"""Datasets read item by item (image folders, Hugging Face datasets): decoded on access, adapted to the shape
policy per item, and able to materialize into memory for the fast device path."""
from __future__ import annotations

from typing import Callable, Optional, Sequence, Tuple

import torch
from torch.utils.data import Dataset
from torchvision.transforms.v2 import functional as TF

from .base import DatasetInfo, TensorImageDataset, adapt_images, to_float
from .transforms import apply_transform

__all__ = ['LazyImageDataset', 'pil_to_uint8']


def pil_to_uint8(img, channels: int) -> torch.Tensor:
    """A PIL image (any mode) as a uint8 (C, H, W) tensor with 1 or 3 channels."""
    img = img.convert('L' if channels == 1 else 'RGB')
    return TF.pil_to_tensor(img)


class LazyImageDataset(Dataset):
    """``load(i) -> (uint8 CHW tensor, label)`` wrapped with the shape policy and an optional transform. ``labels``
    (every item's, known without decoding an image) lets label checks and stratified evaluation subsets read them
    without loading the images."""

    def __init__(self, load: Callable[[int], Tuple[torch.Tensor, int]], length: int, info: DatasetInfo,
                 transform: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
                 labels: Optional[Sequence[int]] = None):
        self._load = load
        self._length = length
        self.info = info
        self.transform = transform
        if labels is not None:
            self.labels = torch.as_tensor(list(labels), dtype=torch.long)

    def __len__(self) -> int:
        return self._length

    def raw(self, i: int) -> Tuple[torch.Tensor, int]:
        img, label = self._load(i)
        return adapt_images(img.unsqueeze(0), self.info.input_size)[0], int(label)

    def __getitem__(self, i: int) -> Tuple[torch.Tensor, int]:
        img, label = self.raw(i)
        return to_float(apply_transform(self.transform, img, i)), label

    def materialize(self) -> TensorImageDataset:
        """Decode every item once into one uint8 tensor (for small datasets and the fast path)."""
        items = [self.raw(i) for i in range(len(self))]
        images = torch.stack([im for im, _ in items]) if items else torch.zeros(0, *self.info.input_size,
                                                                               dtype=torch.uint8)
        labels = torch.tensor([lb for _, lb in items], dtype=torch.long)
        return TensorImageDataset(images, labels, self.info, self.transform)

"""Dataset containers and the shape policy shared by training, evaluation and checkpoints.

Images are kept as uint8 (N, C, H, W) and handed out as float pixels in [0, 1]; nothing here normalizes
(normalization happens after noise is added, in :mod:`timm_lipschitz.normalization`).

Shape policy (:func:`adapt_images`), applied once when ``input_size=(C, H, W)`` is asked for:
- spatial: a size that grows by at most 8 pixels per side-pair is zero-padded, centred (28x28 MNIST -> 32x32 pads
  2 pixels, as the CIFAR models expect, without resampling the strokes); any other change is a bilinear,
  antialiased resize (digits' 8x8 -> 32x32).
- channels: 1 -> 3 replicates the gray channel. Replication multiplies ||x_bar - x|| by sqrt(3) for the same
  per-pixel sigma, so the Lipschitz target L_n means something else than on 1-channel inputs. 3 -> 1 takes the
  ITU-R 601 luma.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ..errors import UsageError
from .transforms import apply_transform

__all__ = ['DatasetInfo', 'TensorImageDataset', 'DataError', 'adapt_images', 'check_labels', 'to_float',
           'split_fingerprint', 'timm_crop_pct']

PAD_LIMIT = 8


class DataError(UsageError):
    """Data is missing, unreadable or inconsistent; the message says where and how to fix it."""


@dataclass
class DatasetInfo:
    """Metadata of a split: class count, native (C, H, W) size, class names, and the size handed out."""
    name: str
    split: str
    num_classes: int
    native_size: Tuple[int, int, int]
    input_size: Tuple[int, int, int]
    class_names: List[str] = field(default_factory=list)
    num_samples: int = 0
    source: str = ''

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float32 [0, 1]; float input is returned as float32 unchanged."""
    return images.float().div_(255) if images.dtype == torch.uint8 else images.float()


def _adapt_spatial(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    H, W = x.shape[-2:]
    if (H, W) == (h, w):
        return x
    if 0 <= h - H <= PAD_LIMIT and 0 <= w - W <= PAD_LIMIT:
        top, left = (h - H) // 2, (w - W) // 2
        return F.pad(x, (left, w - W - left, top, h - H - top))
    y = F.interpolate(to_float(x), size=(h, w), mode='bilinear', antialias=True, align_corners=False)
    return (y * 255).round_().clamp_(0, 255).to(torch.uint8) if x.dtype == torch.uint8 else y


def timm_crop_pct(native_size: Sequence[int], input_size: Sequence[int]) -> float:
    """The ``crop_pct`` with which timm's eval transform (``resolve_data_config`` + ``create_transform``) gives the
    inputs :func:`_adapt_spatial` gives, so timm's own preprocessing reproduces a checkpoint's accuracy.

    timm resizes the shorter side to ``floor(size / crop_pct)`` and center-crops ``size``; torchvision's center crop
    pads with zeros when the image is smaller. Where this package zero-pads (28 px Fashion-MNIST in a 32 px ResNet,
    8 px digits in 16 px), ``crop_pct = size / native`` (rounded down, so the floor lands on the native size) makes
    the resize keep the native size and the crop pad it exactly as training did; elsewhere 1.0 (resize to the size).
    """
    (H, W), (h, w) = tuple(native_size[-2:]), tuple(input_size[-2:])
    pads = (H, W) != (h, w) and 0 <= h - H <= PAD_LIMIT and 0 <= w - W <= PAD_LIMIT
    if not pads or h * W != w * H:  # no padding, or one crop_pct cannot pad both sides alike
        return 1.0
    return math.floor(h / H * 1e6) / 1e6


def _adapt_channels(x: torch.Tensor, c: int) -> torch.Tensor:
    C = x.shape[1]
    if C == c:
        return x
    if C == 1:
        return x.expand(-1, c, -1, -1).contiguous()
    if C == 3 and c == 1:
        luma = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
        y = (to_float(x) * luma).sum(1, keepdim=True)
        return (y * 255).round_().clamp_(0, 255).to(torch.uint8) if x.dtype == torch.uint8 else y
    raise DataError(f'cannot adapt {C}-channel images to {c} channels; allowed: same count, 1 -> any, 3 -> 1.')


def adapt_images(images: torch.Tensor, input_size: Optional[Sequence[int]]) -> torch.Tensor:
    """Apply the shape policy (module doc) to an (N, C, H, W) batch; ``None`` keeps the native size."""
    if input_size is None:
        return images
    if len(input_size) != 3 or any(int(s) < 1 for s in input_size):
        raise UsageError(f'input_size={tuple(input_size)!r} is not allowed; give (channels, height, width).')
    c, h, w = (int(s) for s in input_size)
    return _adapt_channels(_adapt_spatial(images, h, w), c)


def check_labels(labels: torch.Tensor, num_classes: int, where: str) -> None:
    """Labels must lie in [0, num_classes) of the model that will be trained or evaluated on them."""
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise DataError(f'{where}: labels span [{int(labels.min())}, {int(labels.max())}] but the model has '
                        f'num_classes={num_classes}; labels must lie in [0, {num_classes - 1}].')


class TensorImageDataset(Dataset):
    """A whole split in memory as uint8 (N, C, H, W) + int64 labels; the fast device path reads it directly.

    ``transform`` (torchvision v2, on uint8 tensors) is applied per item on the standard path; items come out
    as float32 in [0, 1].
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, info: DatasetInfo,
                 transform: Optional[Callable[[torch.Tensor], torch.Tensor]] = None):
        if images.ndim != 4:
            raise UsageError(f'images must be (N, C, H, W); got shape {tuple(images.shape)}.')
        if len(images) != len(labels):
            raise UsageError(f'{len(images)} images but {len(labels)} labels.')
        self.images = images
        self.labels = labels.long()
        self.info = info
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> Tuple[torch.Tensor, int]:
        return to_float(apply_transform(self.transform, self.images[i], i)), int(self.labels[i])

    def subset(self, indices: torch.Tensor) -> 'TensorImageDataset':
        """The same split restricted to ``indices`` (e.g. a training-data fraction)."""
        info = DatasetInfo(**{**self.info.to_dict(), 'num_samples': len(indices)})
        return TensorImageDataset(self.images[indices], self.labels[indices], info, self.transform)


FINGERPRINT_SAMPLES = 64  # images decoded for the fingerprint of a split read from files (all of an in-memory one)


def evaluated_fingerprint(dataset) -> str:
    """sha256 (first 16 hex) of every image and label of a dataset as an evaluation reads them (after the shape
    policy, in evaluation order): two evaluations with the same fingerprint measured the same images."""
    h = hashlib.sha256(f'{len(dataset)}'.encode())
    for i in range(len(dataset)):
        image, label = dataset[i]
        h.update(int(label).to_bytes(8, 'little', signed=True))
        h.update(torch.as_tensor(image).float().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def split_fingerprint(dataset) -> str:
    """sha256 (first 16 hex) of a split's labels and images: every image of an in-memory split, and
    :data:`FINGERPRINT_SAMPLES` evenly spread decoded images of one read from files. Two roots that give the same
    fingerprint hold the same split (a resume may then read it from the new root)."""
    h = hashlib.sha256(f'{len(dataset)}'.encode())
    if hasattr(dataset, 'images') and hasattr(dataset, 'labels'):
        h.update(dataset.labels.numpy().tobytes())
        h.update(dataset.images.contiguous().numpy().tobytes())
        return h.hexdigest()[:16]
    raw = getattr(dataset, 'raw', None) or dataset.__getitem__
    step = max(1, len(dataset) // FINGERPRINT_SAMPLES)
    for i in range(0, len(dataset), step):
        image, label = raw(i)
        h.update(int(label).to_bytes(8, 'little', signed=True))
        h.update(torch.as_tensor(image).contiguous().numpy().tobytes())
    return h.hexdigest()[:16]

"""Accuracy under additive Gaussian noise in [0,1] pixel space, with common random numbers.

For each (seed, image index, repeat) one unit draw z ~ N(0, I) is made, and the noisy image at level sigma is
x + sigma * z (optionally clipped to [0,1] and stored as uint8 levels, as CIFAR-10-C does). The draw depends on
nothing else - not the batch, the sigma grid, the device or the process - so two models, two batch sizes or two
grids see exactly the same noisy images, and each image's draw is made once for the whole grid. The data is read
once; every sigma reuses the batch in memory.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ..errors import UsageError
from ..modes import eval_mode
from ..normalization import Normalizer, warn_if_not_pixels
from ..protocol import (CIFAR10C_GAUSSIAN, MNIST_SIGMAS, PAPER_SIGMAS, TABLE_SIGMAS, SigmaSpec, mean_std, parse_sigmas,
                        resolve_protocol, summarize, to_uint8_levels, value_at)
from ..seeding import stream_seed

__all__ = ['PAPER_SIGMAS', 'MNIST_SIGMAS', 'CIFAR10C_GAUSSIAN', 'parse_sigmas', 'unit_noise', 'noise_sweep',
           'SweepResult', 'IndexedDataset', 'TABLE_SIGMAS', 'batch_unit_noise', 'noisy_images']


def unit_noise(shape: Sequence[int], seed: int, index: int, repeat: int) -> torch.Tensor:
    """The unit Gaussian draw of one (seed, image index, repeat): the only source of evaluation noise."""
    g = torch.Generator().manual_seed(stream_seed('evaluation_noise', seed, index, repeat))
    return torch.randn(tuple(shape), generator=g)


def batch_unit_noise(shape: Sequence[int], seed: int, indices: Sequence[int], repeat: int) -> torch.Tensor:
    """The unit draws of a batch of images, stacked: one :func:`unit_noise` per image index."""
    return torch.stack([unit_noise(shape, seed, int(i), repeat) for i in indices])


class IndexedDataset(Dataset):
    """Items (image, label, index), so noise can be keyed by the image's index in the split."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        x, y = self.dataset[i]
        return x, y, i


def indexed_batches(data: Union[Dataset, Tuple[torch.Tensor, ...]], batch_size: int, desc: str,
                    progress: bool = False, accelerator: Any = None):
    """The evaluation's batches of (images, labels, image indices) in split order, the indices keying each image's
    noise or corruption; split over an accelerator's processes when one is given, with a progress bar on request
    (on the main process)."""
    if isinstance(data, tuple):
        data = torch.utils.data.TensorDataset(*data)
    loader = DataLoader(IndexedDataset(data), batch_size=batch_size, shuffle=False)
    if accelerator is not None:
        loader = accelerator.prepare_data_loader(loader)
    if progress:
        loader = tqdm(loader, desc=desc, leave=False,
                      disable=accelerator is not None and not accelerator.is_main_process)
    return loader


@dataclass
class SweepResult:
    """Accuracy per sigma: mean and std over repeats (the protocol's sample std), and the per-repeat values."""
    sigmas: List[float]
    accuracy: List[float]
    accuracy_std: List[float]
    per_repeat: List[List[float]]
    num_images: int
    repeats: int
    seed: int
    clip: bool
    quantize: bool
    extra: Dict[str, Any] = field(default_factory=dict)

    def at(self, sigma: float) -> Optional[float]:
        """Accuracy at ``sigma`` if it is on the grid."""
        return value_at(self.sigmas, self.accuracy, sigma)

    def summary(self) -> Dict[str, Optional[float]]:
        """The paper's table columns (sigma 0 / 0.3 / 0.5) and the mean accuracy over the grid."""
        return summarize(self.sigmas, self.accuracy)

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        d['summary'] = self.summary()
        return d


def noisy_images(images: torch.Tensor, z: torch.Tensor, sigma: float, clip: bool = False,
                 quantize: bool = False) -> torch.Tensor:
    """x + sigma * z, optionally clipped to [0,1] and stored as uint8 levels (as CIFAR-10-C stores images)."""
    x = images + sigma * z if sigma else images
    if clip or quantize:
        x = x.clamp(0, 1)
    if quantize:
        x = to_uint8_levels(x)
    return x


@torch.no_grad()
def noise_sweep(model: nn.Module, data: Union[Dataset, Tuple[torch.Tensor, torch.Tensor]],
                sigmas: SigmaSpec = None, repeats: int = 1, seed: int = 0,
                clip: bool = False, quantize: bool = False, batch_size: int = 256,
                mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None,
                accelerator: Any = None, progress: bool = False) -> SweepResult:
    """Accuracy of ``model`` on ``data`` under Gaussian pixel noise at each sigma, ``repeats`` draws each.

    ``sigmas`` is a grid or a preset of the evaluation protocol (:mod:`.protocol`; a preset brings its own
    clipping and rounding). ``data`` is a dataset of (image in [0,1], label) or a tuple of tensors.
    ``mean``/``std`` are needed only for models without a timm ``pretrained_cfg``. With an
    ``accelerate.Accelerator`` the images are split over its processes and counts are gathered
    (``gather_for_metrics``); the result is the same as on one process.
    """
    protocol = resolve_protocol(sigmas, clip=clip)
    sigmas, clip, quantize = list(protocol.sigmas), protocol.clip, protocol.quantize or quantize
    if not isinstance(repeats, int) or isinstance(repeats, bool) or repeats < 1:
        raise UsageError(f'repeats={repeats!r} is not allowed; it must be an integer >= 1.')
    normalizer = Normalizer(mean, std)
    batches = indexed_batches(data, batch_size, f'noise sweep ({len(sigmas)} sigmas x {repeats})', progress,
                              accelerator)
    device = accelerator.device if accelerator is not None else next(model.parameters()).device
    correct = torch.zeros(repeats, len(sigmas), dtype=torch.float64)
    total = 0
    with eval_mode(model):
        for images, labels, index in batches:
            images, labels = images.to(device), labels.to(device)
            if total == 0:
                warn_if_not_pixels(images, 'the evaluation images')
            hits = torch.zeros(repeats, len(sigmas), len(labels), device=device)
            for r in range(repeats):
                z = batch_unit_noise(images.shape[1:], seed, index.tolist(), r).to(device)
                for j, sigma in enumerate(sigmas):
                    logits = model(normalizer(model, noisy_images(images, z, sigma, clip, quantize)))
                    hits[r, j] = (logits.argmax(1) == labels).float()
            if accelerator is not None:
                hits = accelerator.gather_for_metrics(hits.permute(2, 0, 1)).permute(1, 2, 0)
            correct += hits.sum(2).double().cpu()
            total += hits.shape[2]
    if total == 0:
        raise UsageError('the evaluation data is empty.')
    acc = (correct / total * 100).tolist()
    cells = [mean_std([a[j] for a in acc]) for j in range(len(sigmas))]
    return SweepResult(sigmas, [c[0] for c in cells], [c[1] for c in cells], acc, total, repeats, seed, clip,
                       quantize)

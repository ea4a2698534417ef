"""Lipschitz estimates of a classifier, measured from [0,1] pixels (normalization included):

- :func:`sampled_k` - the paper's k(x) = ||f(x + n) - f(x)|| / ||n|| at a given sigma (mean, p95, max);
- :func:`pgd_lower_bound` - gradient ascent on ||f(x + d) - f(x)|| / ||d|| over l2 balls: a lower bound of the
  local (and so of the global) Lipschitz constant;
- :func:`jacobian_norm` - the largest singular value of the input-to-output Jacobian, by power iteration.

The sound upper bound, what a model declares of itself, is :mod:`timm_lipschitz.certificates`; its soundness check
holds the declaration against these estimates.
"""
from __future__ import annotations

from typing import Any, Dict, Optional

import torch
import torch.nn as nn
from torch.autograd.functional import jvp, vjp  # double-backward forms: work with any module's forward
from torch.utils.data import DataLoader, Dataset

from ..modes import eval_mode
from ..normalization import Normalizer
from ..ratio import ADVERSARIAL_STEP, lipschitz_ratio, worst_direction
from ..seeding import stream_seed
from .noise import IndexedDataset, batch_unit_noise

__all__ = ['sampled_k', 'pgd_lower_bound', 'jacobian_norm']


@torch.no_grad()
def sampled_k(model: nn.Module, data: Dataset, sigma: float, output: str = 'logits', seed: int = 0,
              batch_size: int = 256, mean=None, std=None) -> Dict[str, float]:
    """The paper's k(x) at ``sigma`` for every image (noise keyed by image index, as in the noise sweep)."""
    norm = Normalizer(mean, std)
    with eval_mode(model):
        ks = []
        for images, _, index in DataLoader(IndexedDataset(data), batch_size=batch_size):
            delta = sigma * batch_unit_noise(images.shape[1:], seed, index.tolist(), 0)
            ks.append(lipschitz_ratio(model(norm(model, images)), model(norm(model, images + delta)), delta, output))
        k = torch.cat(ks)
        return {'sigma': sigma, 'output': output, 'mean': k.mean().item(), 'p95': torch.quantile(k, 0.95).item(),
                'max': k.max().item(), 'num_images': len(k)}


def pgd_lower_bound(model: nn.Module, data: Dataset, radius: float = 0.5, steps: int = 20,
                    step_size: float = ADVERSARIAL_STEP,
                    output: str = 'logits', seed: int = 0, batch_size: int = 128, max_images: Optional[int] = 256,
                    mean=None, std=None) -> Dict[str, Any]:
    """Maximize ||f(x + d) - f(x)|| / ||d|| over ||d|| = ``radius`` by normalized gradient ascent (l2 PGD).

    Every value found is attained by a real pair of inputs, so the maximum is a lower bound of the local
    Lipschitz constant at those images and of the global one.
    """
    norm = Normalizer(mean, std)
    with eval_mode(model):
        g = torch.Generator().manual_seed(stream_seed('attack_start', seed, 0))
        ratios = []
        seen = 0
        for images, _ in DataLoader(data, batch_size=batch_size):
            if max_images is not None and seen >= max_images:
                break
            images = images[:max_images - seen] if max_images is not None else images
            seen += len(images)
            _, best = worst_direction(lambda x: model(norm(model, x)), images, radius, steps, step_size,
                                      torch.randn(images.shape, generator=g), output)
            ratios.append(best)
        r = torch.cat(ratios)
        return {'radius': radius, 'steps': steps, 'output': output, 'max': r.max().item(), 'mean': r.mean().item(),
                'num_images': len(r)}


def jacobian_norm(f, x: torch.Tensor, iters: int = 30, seed: int = 0) -> torch.Tensor:
    """The largest singular value of the input-to-output Jacobian of ``f`` at each image of ``x``, by power iteration
    on J^T J (a jvp, then a vjp, per step). ``f`` must treat images independently (eval mode). Each value is
    attained by the model, so it is a lower bound of its Lipschitz constant: a declared constant below it is false."""
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(x.shape, generator=g).to(x)
    x = x.detach()
    sigma = torch.zeros(len(x))
    for _ in range(iters):
        v = v / v.flatten(1).norm(dim=1).clamp_min(1e-30).view(-1, *[1] * (x.dim() - 1))
        _, u = jvp(f, x, v)                                # J v
        sigma = u.flatten(1).norm(dim=1).detach()
        _, v = vjp(f, x, u)                                # J^T J v
    return sigma.cpu()

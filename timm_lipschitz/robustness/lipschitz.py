"""Lipschitz estimates and bounds of a classifier, measured from [0,1] pixels (normalization included):

- :func:`sampled_k` - the paper's k(x) = ||f(x + n) - f(x)|| / ||n|| at a given sigma (mean, p95, max);
- :func:`pgd_lower_bound` - gradient ascent on ||f(x + d) - f(x)|| / ||d|| over l2 balls: a lower bound of the
  local (and so of the global) Lipschitz constant;
- :func:`spectral_upper_bound` - a sound global upper bound, as the model declares it: each model class owns its
  bound (``model.lipschitz_constant()``, :mod:`timm_lipschitz.models._bounds`), the product of per-layer l2
  operator norms, normalization folded in.
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset

from ..ratio import ADVERSARIAL_STEP, lipschitz_ratio, worst_direction
from ..models._bounds import DeclaresLipschitz, bn_scale, conv_operator_norm  # noqa: F401 (re-exported)
from ..modes import eval_mode
from ..normalization import Normalizer, per_channel, resolve_mean_std, unwrap_model
from ..seeding import stream_seed
from .noise import IndexedDataset, batch_unit_noise
from ..protocol import CERT_RADII, LIPSCHITZ_TOLERANCE

__all__ = ['sampled_k', 'pgd_lower_bound', 'jacobian_norm', 'spectral_upper_bound', 'conv_operator_norm', 'bn_scale',
           'margin_certificate']


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
    from torch.autograd.functional import jvp, vjp  # the double-backward forms: work with any module's forward
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


# ---- sound upper bound -----------------------------------------------------------------------------------------
def spectral_upper_bound(model: nn.Module, input_size: Optional[Sequence[int]] = None, mean=None,
                         std=None) -> Dict[str, Any]:
    """A sound upper bound of the l2 Lipschitz constant of the logits w.r.t. [0,1] pixels (of the eval-mode model),
    as the model declares it (:class:`~timm_lipschitz.models._bounds.DeclaresLipschitz`); a model that declares
    none raises ``NotImplementedError``."""
    m = unwrap_model(model)  # weights and BN running statistics only: the model's mode is left as it is
    if not isinstance(m, DeclaresLipschitz):
        raise NotImplementedError(f'no Lipschitz upper bound for {type(m).__name__}: it declares none '
                                  f'(lipschitz_constant()); this package\'s CifarResNet and MnistConvNet do.')
    return m.lipschitz_bound(*bound_inputs(m, input_size, mean, std))


def bound_inputs(model: nn.Module, input_size: Optional[Sequence[int]] = None, mean=None,
                 std=None) -> Tuple[Tuple[int, ...], Tuple[float, ...]]:
    """The input size and per-channel std a model's bound and declared constant are taken at (its own by default)."""
    size = tuple(input_size or model.pretrained_cfg['input_size'])
    _, sd = resolve_mean_std(model, mean, std)
    return size, per_channel(sd, size[0], 'std')


@torch.no_grad()
def margin_certificate(model: nn.Module, data: Dataset, lipschitz_bound: float, batch_size: int = 256,
                       radii: Sequence[float] = CERT_RADII, mean=None, std=None,
                       tolerance: float = LIPSCHITZ_TOLERANCE) -> Dict[str, Any]:
    """The deterministic certificate: image i is certified at every l2 radius up to margin_i / (sqrt(2) L (1 + tol))
    when it is classified correctly (each logit difference is sqrt(2) L-Lipschitz when the logits are L-Lipschitz);
    ``L`` is the model's declared constant, ``tol`` the tolerance its soundness check allows. ``radius`` lists the
    per-image radius in evaluation order (-1: misclassified)."""
    norm = Normalizer(mean, std)
    scale = 2 ** 0.5 * lipschitz_bound * (1 + tolerance)
    with eval_mode(model):
        radius = []
        for images, labels in DataLoader(data, batch_size=batch_size):
            logits = model(norm(model, images))
            top2 = logits.topk(2, dim=1)
            margin = top2.values[:, 0] - top2.values[:, 1]
            correct = top2.indices[:, 0] == labels
            radius.append(torch.where(correct, margin / scale, torch.full_like(margin, -1.0)))
        r = torch.cat(radius)
        return {'lipschitz_bound': lipschitz_bound, 'tolerance': tolerance, 'radii': list(radii),
                'num_images': len(r), 'clean': 100.0 * (r >= 0).float().mean().item(),
                'certified_accuracy': [100.0 * (r >= t).float().mean().item() if t > 0 else
                                       100.0 * (r >= 0).float().mean().item() for t in radii],
                'mean_radius': r.clamp_min(0).mean().item(), 'radius': [round(v, 6) for v in r.tolist()]}

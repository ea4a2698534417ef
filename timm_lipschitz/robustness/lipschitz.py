"""Lipschitz estimates and bounds of a classifier, measured from [0,1] pixels (normalization included):

- :func:`sampled_k` - the paper's k(x) = ||f(x + n) - f(x)|| / ||n|| at a given sigma (mean, p95, max);
- :func:`pgd_lower_bound` - gradient ascent on ||f(x + d) - f(x)|| / ||d|| over l2 balls: a lower bound of the
  local (and so of the global) Lipschitz constant;
- :func:`spectral_upper_bound` - a sound global upper bound: the product of per-layer l2 operator norms. Every
  factor is itself an upper bound: a zero-padded convolution is a sub-block of the circular convolution on the
  padded grid, whose norm is computed exactly as the largest singular value over FFT frequencies; stride only
  subsamples (norm 1); eval-mode BatchNorm is folded into the adjacent convolution where nothing sits between
  them and otherwise bounded by max |gamma / sqrt(var + eps)|; a residual block x + F(x) is bounded by 1 + L(F).
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset

from ..losses.adversarial import worst_direction
from ..losses.lipschitz import ADVERSARIAL_STEP, lipschitz_ratio
from ..modes import eval_mode
from ..normalization import Normalizer, per_channel, resolve_mean_std, unwrap_model
from ..seeding import stream_seed
from .noise import IndexedDataset, batch_unit_noise
from .protocol import CERT_RADII

__all__ = ['sampled_k', 'pgd_lower_bound', 'spectral_upper_bound', 'conv_operator_norm', 'bn_scale',
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


# ---- sound upper bound -----------------------------------------------------------------------------------------
def bn_scale(bn: nn.Module) -> torch.Tensor:
    """Per-channel multiplier of an eval-mode BatchNorm: gamma / sqrt(running_var + eps)."""
    w = bn.weight if bn.weight is not None else torch.ones_like(bn.running_var)
    return w.detach() / torch.sqrt(bn.running_var + bn.eps)


def conv_operator_norm(weight: torch.Tensor, input_hw: Tuple[int, int]) -> float:
    """An upper bound of the l2 norm of a zero-padded conv on ``input_hw`` inputs (any stride / padding).

    The zero-padded conv is a sub-block of the circular conv on an (H + k - 1) x (W + k - 1) grid; that one is
    block-diagonalized by the 2D DFT, and its norm is the largest singular value of the (out x in) kernel
    transfer matrices over all frequencies. Stride subsamples the output (norm 1), so it cannot increase it.
    """
    w = weight.detach().double()
    cout, cin, kh, kw = w.shape
    n1, n2 = input_hw[0] + kh - 1, input_hw[1] + kw - 1
    transfer = torch.fft.fft2(w, s=(n1, n2))                     # (out, in, n1, n2)
    mats = transfer.permute(2, 3, 0, 1).reshape(-1, cout, cin)  # one (out x in) matrix per frequency
    return torch.linalg.svdvals(mats).max().item()


def _conv_out_hw(conv: nn.Conv2d, hw: Tuple[int, int]) -> Tuple[int, int]:
    return tuple((hw[i] + 2 * conv.padding[i] - conv.dilation[i] * (conv.kernel_size[i] - 1) - 1) // conv.stride[i]
                 + 1 for i in range(2))


def _conv_bn(conv: nn.Conv2d, bn: Optional[nn.Module], hw: Tuple[int, int]) -> Tuple[float, Tuple[int, int]]:
    w = conv.weight.detach()
    if bn is not None and isinstance(bn, nn.BatchNorm2d):
        w = w * bn_scale(bn).view(-1, 1, 1, 1)  # BN right after the conv: fold it into the output channels
    return conv_operator_norm(w, hw), _conv_out_hw(conv, hw)


def _block_bound(block: nn.Module, hw: Tuple[int, int]) -> Tuple[float, Tuple[int, int]]:
    from ..models.cifar_resnet import BasicBlock, PreActBasicBlock, ShortcutA
    if isinstance(block, BasicBlock):
        a, hw1 = _conv_bn(block.conv1, block.bn1, hw)
        b, hw2 = _conv_bn(block.conv2, block.bn2, hw1)
    elif isinstance(block, PreActBasicBlock):
        s1 = bn_scale(block.bn1).abs().max().item()
        a, hw1 = _conv_bn(block.conv1, None, hw)
        s2 = bn_scale(block.bn2).abs().max().item()
        b, hw2 = _conv_bn(block.conv2, None, hw1)
        a, b = a * s1, b * s2
    else:
        raise NotImplementedError(f'no Lipschitz bound for block type {type(block).__name__}.')
    if block.downsample is None or isinstance(block.downsample, ShortcutA):
        short = 1.0  # identity, or subsample + zero channels: norm <= 1
    else:
        short, _ = _conv_bn(block.downsample[0], block.downsample[1], hw)
    return short + a * b, hw2


def spectral_upper_bound(model: nn.Module, input_size: Optional[Sequence[int]] = None, mean=None,
                         std=None) -> Dict[str, Any]:
    """A sound upper bound of the l2 Lipschitz constant of the logits w.r.t. [0,1] pixels (of the eval-mode model).

    Supported: this package's CIFAR ResNet / PreResNet and ``mnist_convnet``; other models raise
    ``NotImplementedError`` naming the layer type.
    """
    from ..models.cifar_resnet import CifarResNet
    from ..models.mnist_convnet import MnistConvNet
    m = unwrap_model(model)  # weights and BN running statistics only: the model's mode is left as it is
    size = tuple(input_size or m.pretrained_cfg['input_size'])
    mu, sd = resolve_mean_std(m, mean, std)
    factors: List[Tuple[str, float]] = [('normalize', 1.0 / min(per_channel(sd, size[0], 'std')))]
    hw = size[1:]
    if isinstance(m, CifarResNet):
        if m.preact:
            v, hw = _conv_bn(m.conv1, None, hw)
        else:
            v, hw = _conv_bn(m.conv1, m.bn1, hw)
        factors.append(('stem', v))
        for li in (m.layer1, m.layer2, m.layer3):
            for bi, block in enumerate(li):
                v, hw = _block_bound(block, hw)
                factors.append((f'block{len(factors)}', v))
        if m.preact:
            factors.append(('norm', bn_scale(m.norm).abs().max().item()))
        pool = m.global_pool.pool_type if hasattr(m.global_pool, 'pool_type') else 'avg'
        if pool not in ('avg', 'max'):
            raise NotImplementedError(f'no Lipschitz bound for global pool {pool!r}.')
        factors.append(('pool', (1.0 / (hw[0] * hw[1])) ** 0.5 if pool == 'avg' else 1.0))
        factors.append(('fc', torch.linalg.matrix_norm(m.fc.weight.detach().double(), ord=2).item()))
    elif isinstance(m, MnistConvNet):
        v, hw = _conv_bn(m.conv1, None, hw)
        factors += [('conv1', v), ('pool', 1.0),
                    ('fc1', torch.linalg.matrix_norm(m.fc1.weight.detach().double(), ord=2).item()),
                    ('fc', torch.linalg.matrix_norm(m.fc.weight.detach().double(), ord=2).item())]
    else:
        raise NotImplementedError(f'no Lipschitz upper bound for {type(m).__name__}; supported: CifarResNet, '
                                  f'MnistConvNet.')
    bound = 1.0
    for _, v in factors:
        bound *= v
    return {'bound': bound, 'factors': dict(factors), 'input_size': list(size),
            'method': 'product of exact per-layer norms of circular-padded convs (FFT + SVD, no iteration), '
                      'folded eval BatchNorm, residual 1 + L(F); sound for zero padding'}


@torch.no_grad()
def margin_certificate(model: nn.Module, data: Dataset, lipschitz_bound: float, batch_size: int = 256,
                       radii: Sequence[float] = CERT_RADII, mean=None, std=None) -> Dict[str, Any]:
    """Certified radius margin / (sqrt(2) L) per correctly classified image, from a global upper bound L of the
    logits' Lipschitz constant (each logit difference is sqrt(2) L-Lipschitz)."""
    norm = Normalizer(mean, std)
    with eval_mode(model):
        radius = []
        for images, labels in DataLoader(data, batch_size=batch_size):
            logits = model(norm(model, images))
            top2 = logits.topk(2, dim=1)
            margin = top2.values[:, 0] - top2.values[:, 1]
            correct = top2.indices[:, 0] == labels
            radius.append(torch.where(correct, margin / (2 ** 0.5 * lipschitz_bound), torch.full_like(margin, -1.0)))
        r = torch.cat(radius)
        return {'lipschitz_bound': lipschitz_bound, 'radii': list(radii),
                'certified_accuracy': [100.0 * (r >= t).float().mean().item() if t > 0 else
                                       100.0 * (r >= 0).float().mean().item() for t in radii],
                'mean_radius': r.clamp_min(0).mean().item()}

"""Each model declares its own Lipschitz constant: a sound upper bound of the l2 Lipschitz constant of its logits
with respect to [0,1] pixels, the input normalization folded in (dividing by a std below 1 multiplies it).

A model class that can bound itself mixes in :class:`DeclaresLipschitz` and lists its factors
(:meth:`~DeclaresLipschitz.lipschitz_factors`, on normalized inputs); the evaluation reads the constant from the
model (``model.lipschitz_constant()``) instead of knowing the architectures. Every factor is itself an upper bound:
a zero-padded convolution is a sub-block of the circular convolution on the padded grid, whose norm is computed
exactly as the largest singular value over FFT frequencies; stride only subsamples (norm 1); eval-mode BatchNorm is
folded into the convolution right before it and otherwise bounded by max |gamma / sqrt(var + eps)|; a residual
block x + F(x) is bounded by 1 + L(F).
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

__all__ = ['DeclaresLipschitz', 'bn_scale', 'conv_operator_norm', 'conv_bn_bound', 'linear_norm']

Factors = List[Tuple[str, float]]


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


def conv_bn_bound(conv: nn.Conv2d, bn: Optional[nn.Module], hw: Tuple[int, int]) -> Tuple[float, Tuple[int, int]]:
    """The norm of a conv (BatchNorm right after it folded into its output channels) and its output size."""
    w = conv.weight.detach()
    if bn is not None and isinstance(bn, nn.BatchNorm2d):
        w = w * bn_scale(bn).view(-1, 1, 1, 1)
    return conv_operator_norm(w, hw), _conv_out_hw(conv, hw)


def linear_norm(layer: nn.Linear) -> float:
    """The spectral norm of a linear layer's weight."""
    return torch.linalg.matrix_norm(layer.weight.detach().double(), ord=2).item()


class DeclaresLipschitz:
    """A model that bounds its own Lipschitz constant (of its eval-mode logits, w.r.t. [0,1] pixels)."""

    lipschitz_method = ('product of exact per-layer norms of circular-padded convs (FFT + SVD, no iteration), '
                        'folded eval BatchNorm, residual 1 + L(F); sound for zero padding')

    def lipschitz_factors(self, hw: Tuple[int, int]) -> Factors:
        """The per-layer bounds whose product bounds the logits w.r.t. the normalized input of size ``hw``."""
        raise NotImplementedError

    def lipschitz_bound(self, input_size: Optional[Sequence[int]] = None,
                        std: Optional[Sequence[float]] = None) -> Dict[str, Any]:
        """The bound with its factors: the normalization's 1 / min(std) first (``std`` default: the model's own)."""
        size = tuple(input_size or self.pretrained_cfg['input_size'])
        sd = [float(s) for s in (std if std is not None else self.pretrained_cfg.get('std', (1.0,)))]
        factors: Factors = [('normalize', 1.0 / min(sd))] + self.lipschitz_factors(tuple(size[1:]))
        bound = 1.0
        for _, v in factors:
            bound *= v
        return {'bound': bound, 'factors': dict(factors), 'input_size': list(size), 'method': self.lipschitz_method}

    def lipschitz_constant(self, input_size: Optional[Sequence[int]] = None,
                           std: Optional[Sequence[float]] = None) -> float:
        """The declared constant: every pair of inputs x, y in [0,1] pixel space has
        ||f(x) - f(y)|| <= lipschitz_constant() * ||x - y|| (eval mode, these weights)."""
        return self.lipschitz_bound(input_size, std)['bound']

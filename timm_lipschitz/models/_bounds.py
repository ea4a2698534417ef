"""What a model declares of its own Lipschitz constants, and the exact per-layer norms it is measured by.

A model class that can bound itself mixes in :class:`DeclaresLipschitz`: it lists its measured factors
(:meth:`~DeclaresLipschitz.lipschitz_factors`, on normalized inputs, the linear head last) and declares the constants
of its body (input to pre-logits) and of its logits (:meth:`~DeclaresLipschitz.declared_lipschitz`). For an ordinary
network the declaration is the product of the measured factors; a 1-Lipschitz net declares design values
(``lipschitz_by_design``) that its measured factors are checked against. Everything a declaration is used for (the
input normalization folded in, certified radii, the soundness checks) is :mod:`timm_lipschitz.certificates`.

Every factor is itself an upper bound: a zero-padded convolution is a sub-block of the circular convolution on the
padded grid, whose norm is computed exactly as the largest singular value over FFT frequencies; stride only
subsamples (norm 1); eval-mode BatchNorm is folded into the convolution right before it and otherwise bounded by
max |gamma / sqrt(var + eps)|; a residual block x + F(x) is bounded by 1 + L(F).
"""
from __future__ import annotations

import math
from typing import List, NamedTuple, Optional, Tuple

import torch
import torch.nn as nn

__all__ = ['DeclaresLipschitz', 'BlockBound', 'bn_scale', 'conv_operator_norm', 'conv_bn_bound', 'linear_norm',
           'effective_weight']

Factors = List[Tuple[str, float]]


class BlockBound(NamedTuple):
    """A block's bound on inputs of one size, and the size of its output (the next block's input)."""
    bound: float
    out_hw: Tuple[int, int]


def effective_weight(layer: nn.Module) -> torch.Tensor:
    """The weight a layer computes with: a constrained layer's ``constrained_weight()``, else its ``weight``."""
    with torch.no_grad():
        w = layer.constrained_weight() if hasattr(layer, 'constrained_weight') else layer.weight
        return w.detach()


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
    """A model that declares the Lipschitz constants of its eval-mode body and logits w.r.t. its normalized input."""

    lipschitz_method = ('product of exact per-layer norms of circular-padded convs (FFT + SVD, no iteration), '
                        'folded eval BatchNorm, residual 1 + L(F); sound for zero padding')
    lipschitz_by_design = False  # True: declared design values, checked against the measured factors

    def lipschitz_factors(self, hw: Tuple[int, int]) -> Factors:
        """The measured per-layer bounds on a normalized input of size ``hw``, the linear head (``fc``) last."""
        raise NotImplementedError

    def declared_lipschitz(self, hw: Tuple[int, int]) -> Tuple[float, float]:
        """(body, logits): the declared constants of the pre-logits and of the logits; here the measured products."""
        factors = self.lipschitz_factors(hw)
        body = math.prod(v for _, v in factors[:-1])
        return body, body * factors[-1][1]

    def head_rows(self) -> str:
        """How the linear head's rows are constrained: ``orthogonal``, ``unit_rows`` or ``free``."""
        return 'free'

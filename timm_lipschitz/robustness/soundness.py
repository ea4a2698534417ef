"""The checks that make a deterministic certificate trustworthy, run by the evaluation before it certifies and by the
tests. A failed check is a bug in the model or the package, never a result: it raises :class:`SoundnessError`.

- :func:`check_declared`: the model's declared constant (``lipschitz_constant()``) against what its effective weights
  (the cached or exported ones the eval forward runs) give: the product of exact per-layer norms, the largest
  input-to-logit Jacobian norm found by power iteration, and :func:`~.lipschitz.pgd_lower_bound`. None may exceed
  the declared constant times ``1 + tolerance``.
- :func:`check_certified_unbroken`: no image certified at radius r is broken by an attack at radius r.

The certificate itself divides by ``declared * (1 + tolerance)`` (:func:`~.lipschitz.margin_certificate`), so what
the first check lets pass (floating-point rounding of an orthogonal layer, about 1e-7) never inflates a radius.
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Sequence

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset

from ..modes import eval_mode
from ..normalization import Normalizer, unwrap_model
from ..protocol import LIPSCHITZ_TOLERANCE

__all__ = ['SoundnessError', 'check_declared', 'check_certified_unbroken', 'declared_constant', 'SOUNDNESS_IMAGES']

SOUNDNESS_IMAGES = 32   # images of the power iteration and of the PGD search of check_declared
POWER_ITERATIONS = 20


class SoundnessError(RuntimeError):
    """A certificate's premise is false for this model: a bug, never a result (the evaluation stops)."""


def declared_constant(model: nn.Module, input_size: Optional[Sequence[int]] = None, mean=None,
                      std=None) -> Optional[float]:
    """The model's declared Lipschitz constant of its logits w.r.t. [0,1] pixels (None if it declares none)."""
    from .lipschitz import bound_inputs
    m = unwrap_model(model)
    if not hasattr(m, 'lipschitz_constant'):
        return None
    return float(m.lipschitz_constant(*bound_inputs(m, input_size, mean, std)))


def check_declared(model: nn.Module, data: Dataset, mean=None, std=None, images: int = SOUNDNESS_IMAGES,
                   iterations: int = POWER_ITERATIONS, tolerance: float = LIPSCHITZ_TOLERANCE, seed: int = 0,
                   input_size: Optional[Sequence[int]] = None, bound: Optional[float] = None,
                   pgd: Optional[float] = None) -> Dict[str, Any]:
    """Every measurement of the model's effective Lipschitz constant against its declaration (module doc); the
    record of what was checked, or :class:`SoundnessError` naming what exceeded it. ``bound`` / ``pgd``: the
    effective-layer bound and the PGD lower bound when the caller has just measured them on these weights (the
    evaluation's Lipschitz section), instead of measuring them again."""
    from .lipschitz import jacobian_norm, pgd_lower_bound, spectral_upper_bound
    m = unwrap_model(model)
    size = tuple(input_size or m.pretrained_cfg['input_size'])
    declared = declared_constant(m, size, mean, std)
    if declared is None:
        raise NotImplementedError(f'{type(m).__name__} declares no Lipschitz constant (lipschitz_constant()).')
    norm = Normalizer(mean, std)
    with eval_mode(m):
        bound = spectral_upper_bound(m, size, mean, std)['bound'] if bound is None else bound
        x = next(iter(DataLoader(data, batch_size=images)))[0]
        jac = jacobian_norm(lambda v: m(norm(m, v)), x, iterations, seed).max().item()
        pgd = pgd_lower_bound(m, data, seed=seed, mean=mean, std=std, max_images=images)['max'] if pgd is None \
            else pgd
    limit = declared * (1 + tolerance)
    record = {'declared': declared, 'tolerance': tolerance, 'effective_layer_bound': bound,
              'jacobian_norm_max': jac, 'pgd_lower_bound_max': pgd, 'num_images': int(len(x)),
              'power_iterations': iterations}
    over = {k: v for k, v in (('the product of the exact norms of its effective layers', bound),
                              ('the largest Jacobian norm found by power iteration', jac),
                              ('the PGD lower bound', pgd)) if v > limit}
    if over:
        raise SoundnessError(
            f'{type(m).__name__} declares the Lipschitz constant {declared:.6g}, but ' +
            '; '.join(f'{k} is {v:.6g}' for k, v in over.items()) +
            f' (above {declared:.6g} x (1 + {tolerance:g})). Its weights do not satisfy the constraint it declares '
            f'(edited effective weights, a stale cache, a wrong declaration): nothing is certified.')
    return {**record, 'passed': True}


def check_certified_unbroken(radius: torch.Tensor, robust: Dict[str, Sequence[bool]],
                             what: str = 'PGD') -> Dict[str, Any]:
    """``radius[i]``: image i's certified l2 radius (< 0: not certified); ``robust[eps][i]``: whether image i kept
    its label under the attack at l2 ``eps``. An image certified at ``eps`` and broken there is a bug."""
    checked = {}
    for eps, flags in robust.items():
        flags = torch.as_tensor(list(flags), dtype=torch.bool)
        n = min(len(flags), len(radius))
        certified = radius[:n] >= float(eps)
        broken = certified & ~flags[:n]
        if broken.any():
            idx = broken.nonzero().flatten().tolist()
            raise SoundnessError(
                f'{len(idx)} image(s) certified at l2 radius {eps} were broken by {what} at the same radius '
                f'(evaluation order positions {idx[:10]}): the certificate is unsound for this model; nothing is '
                f'reported.')
        checked[str(eps)] = {'certified': int(certified.sum()), 'num_images': n}
    return {'attack': what, 'checked': checked, 'violations': 0}

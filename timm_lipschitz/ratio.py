"""The local Lipschitz ratio k(x) = ||f(x + delta) - f(x)|| / ||delta||, written once, and its search over a sphere.

Both the objectives (:mod:`timm_lipschitz.losses`: the hinge, its worst-direction variant) and the evaluation
(:mod:`timm_lipschitz.robustness.lipschitz`: the sampled k, the PGD lower bound; the certificates' soundness check)
import this module, which imports neither of them. Torch is loaded on first use (the command line reads the objectives
without it).
"""
from __future__ import annotations

from typing import Any, Callable, Tuple

from ._lazy import lazy_module

torch = lazy_module('torch', __name__)
F = lazy_module('torch.nn.functional', __name__)

__all__ = ['lipschitz_ratio', 'model_output', 'worst_direction', 'full_precision', 'per_sample_norm', 'OUTPUTS',
           'ADVERSARIAL_STEP']

ADVERSARIAL_STEP = 0.25  # the search's step, a fraction of the radius (the hinge and the PGD lower bound use it)


def full_precision(t):
    """At least float32: low-precision autocast outputs are upcast, float64 (gradcheck) is kept."""
    return t if t.dtype in (torch.float32, torch.float64) else t.float()

OUTPUTS = ('logits', 'probs')
_EPS = 1e-12


def model_output(logits, output: str = 'logits'):
    """The space k(x) is measured in: raw logits, or softmax probabilities (Theorem 1's label space); float32."""
    logits = full_precision(logits)
    return logits if output == 'logits' else F.softmax(logits, dim=1)


def lipschitz_ratio(clean_logits, noisy_logits, delta, output: str = 'logits'):
    """Per-sample k = ||f(x + delta) - f(x)|| / ||delta|| with f the model's ``output``, in float32 whatever the
    autocast dtype. Differentiable in both logits and in ``delta``.

    A zero input difference (possible only with clipping) has a zero output difference, and gives k = 0.
    """
    num = (model_output(noisy_logits, output) - model_output(clean_logits, output)).flatten(1).norm(dim=1)
    den = full_precision(delta).flatten(1).norm(dim=1)
    return num / den.clamp_min(_EPS)


def per_sample_norm(t):
    return t.flatten(1).norm(dim=1).view(-1, *([1] * (t.ndim - 1)))


def worst_direction(forward: Callable[[Any], Any], images, radius: float, steps: int, step_size: float, start,
                    output: str = 'logits') -> Tuple[Any, Any]:
    """Maximize ||f(x + d) - f(x)|| / ||d|| over ||d|| = ``radius`` (per image) by normalized gradient ascent from
    ``start`` (any tensor shaped like the images; it is scaled onto the sphere). Returns ``(best_d, best_ratio)``:
    the direction that gave each image's largest ratio among the ``steps + 1`` visited, and that ratio. Every ratio
    is attained by a real pair of inputs, so its maximum is a lower bound of the local Lipschitz constant."""
    with torch.no_grad():
        f0 = forward(images)
    d = radius * start / per_sample_norm(start)
    best = torch.zeros(len(images), device=images.device)
    best_d = d.detach().clone()
    for _ in range(steps + 1):
        d.requires_grad_(True)
        ratio = lipschitz_ratio(f0, forward(images + d), d, output)
        better = ratio.detach() > best
        best = torch.maximum(best, ratio.detach())
        best_d = torch.where(better.view(-1, *([1] * (d.ndim - 1))), d.detach(), best_d)
        grad, = torch.autograd.grad(ratio.sum(), d)
        with torch.no_grad():
            d = d + step_size * radius * grad / per_sample_norm(grad).clamp_min(_EPS)
            d = radius * d / per_sample_norm(d).clamp_min(_EPS)
    return best_d, best

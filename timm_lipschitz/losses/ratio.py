"""k(x) = ||f(x + delta) - f(x)|| / ||delta||, written once: the hinge, the worst-direction search
(:mod:`.adversarial`), the evaluation's sampled k and its PGD lower bound all call :func:`lipschitz_ratio`."""
from __future__ import annotations

from .._lazy import lazy_module
from .base import full_precision

torch = lazy_module('torch', __name__)
F = lazy_module('torch.nn.functional', __name__)

__all__ = ['lipschitz_ratio', 'model_output', 'OUTPUTS']

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

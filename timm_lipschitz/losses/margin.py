"""The Lipschitz-margin objective (Tsuzuku, Sato & Sugiyama 2018): cross-entropy on logits whose true class is
lowered by sqrt(2) * L * epsilon.

If the logits are L-Lipschitz in l2, a logit difference moves by at most sqrt(2) * L * ||d|| under a distortion d, so
an image whose margin exceeds sqrt(2) * L * epsilon keeps its label within the l2 ball of radius epsilon: training
for that margin trains for a certificate, the form the 1-Lipschitz network comparisons use. ``lipschitz`` is L: a
number (1 for a network that is 1-Lipschitz by construction) or ``'model'``, the model's own declared constant
(``model.lipschitz_constant()``, read at each step without gradient). For ordinary networks the declared constant is
a product of per-layer norms, often astronomically loose, so ``'model'`` is mostly for small or constrained nets.
"""
from __future__ import annotations

import math
from typing import Any, Optional, Sequence, Union

from .._lazy import lazy_module
from ..normalization import unwrap_model
from .base import HyperparameterError, LossOutput, Objective, check_positive, full_precision
from .registry import register_loss

torch = lazy_module('torch', __name__)
F = lazy_module('torch.nn.functional', __name__)

__all__ = ['LipschitzMargin']


@register_loss('lipschitz_margin')
class LipschitzMargin(Objective):
    """CE(f(x) - sqrt(2) * L * epsilon * onehot(y), y): the margin a Lipschitz certificate of radius epsilon needs."""

    display_name = 'Lipschitz margin'
    abbrev = {'epsilon': 'e', 'lipschitz': 'lc'}
    tag_always = ('epsilon',)

    def __init__(self, epsilon: float = 0.5, lipschitz: Union[float, str] = 1.0, *,
                 mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None,
                 seed: Optional[int] = None):
        super().__init__(mean=mean, std=std, seed=seed)
        self.epsilon = check_positive('epsilon', epsilon)
        self.lipschitz = lipschitz if lipschitz == 'model' else _positive_or_model(lipschitz)

    def constant(self, model: Any) -> float:
        """L: the number given, or the model's declared constant."""
        if self.lipschitz != 'model':
            return float(self.lipschitz)
        m = unwrap_model(model)
        if not hasattr(m, 'lipschitz_constant'):
            raise HyperparameterError('lipschitz', 'model', f'{type(m).__name__} declares no Lipschitz constant '
                                                            f'(lipschitz_constant()); give L as a number')
        return float(m.lipschitz_constant())

    def __call__(self, model, images, targets) -> LossOutput:
        logits = full_precision(self.forward_model(model, images))
        margin = math.sqrt(2) * self.constant(model) * self.epsilon
        shifted = logits - margin * F.one_hot(targets, logits.shape[1]).to(logits.dtype)
        loss = F.cross_entropy(shifted, targets)
        return LossOutput(loss, logits, {'ce': F.cross_entropy(logits.detach(), targets),
                                         'margin': torch.tensor(margin)})


def _positive_or_model(value: Any) -> float:
    try:
        return check_positive('lipschitz', value)
    except HyperparameterError:
        raise HyperparameterError('lipschitz', value, "lipschitz must be a number > 0 or 'model' (the model's "
                                                      'declared constant)') from None

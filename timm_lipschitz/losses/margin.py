"""The Lipschitz-margin objective (Tsuzuku, Sato & Sugiyama 2018) and the hinge-KR loss of 1-Lipschitz networks.

The margin objective trains for the deterministic certificate of :mod:`timm_lipschitz.certificates`: a
cross-entropy on logits shifted by that certificate's margin at radius epsilon (:func:`~timm_lipschitz.certificates.
margin_shift`: the true logit lowered by sqrt(2) L epsilon, or, for a head of unit rows, each other logit raised by
epsilon L_body ||w_y - w_j||). ``lipschitz`` is L: a number (1 for a network that is 1-Lipschitz by construction) or
``'model'``, the model's own declaration at the std the objective normalizes with. For ordinary networks the declared
constant is a product of per-layer norms, often astronomically loose, so ``'model'`` is mostly for constrained nets.
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Union

from .._lazy import lazy_module
from .base import HyperparameterError, LossOutput, Objective, check_positive, full_precision
from .registry import register_loss

torch = lazy_module('torch', __name__)
F = lazy_module('torch.nn.functional', __name__)
certificates = lazy_module('timm_lipschitz.certificates', __name__)
orthogonium_losses = lazy_module('orthogonium.losses', __name__)

__all__ = ['LipschitzMargin', 'HingeKR']


@register_loss('lipschitz_margin')
class LipschitzMargin(Objective):
    """CE(tau * (f(x) - sqrt(2) * L * epsilon * onehot(y)), y): the margin a Lipschitz certificate of radius
    epsilon needs. The temperature tau (the tau-CE of the 1-Lipschitz literature) scales the logits inside the CE
    only: a 1-Lipschitz net's logits move little, and at tau 1 the CE's gradient fades before the margin is met."""

    display_name = 'Lipschitz margin'
    abbrev = {'epsilon': 'e', 'lipschitz': 'lc', 'temperature': 'tau'}
    tag_always = ('epsilon',)

    def __init__(self, epsilon: float = 0.5, lipschitz: Union[float, str] = 1.0, temperature: float = 1.0, *,
                 mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None,
                 seed: Optional[int] = None):
        super().__init__(mean=mean, std=std, seed=seed)
        self.epsilon = check_positive('epsilon', epsilon)
        self.lipschitz = lipschitz if lipschitz == 'model' else _positive_or_model(lipschitz)
        self.temperature = check_positive('temperature', temperature)

    def check_model(self, model: Any) -> None:
        """``lipschitz='model'`` needs a model that declares its constants."""
        if self.lipschitz == 'model' and not certificates.declares(model):
            raise HyperparameterError('lipschitz', 'model', f'{type(model).__name__} declares no Lipschitz constant; '
                                                            f'give L as a number')

    def __call__(self, model, images, targets) -> LossOutput:
        logits = full_precision(self.forward_model(model, images))
        self.check_model(model)
        shift = certificates.margin_shift(model, logits, targets, self.epsilon, self.lipschitz,
                                          self.normalizer.mean, self.normalizer.std)
        loss = F.cross_entropy(self.temperature * (logits + shift), targets)
        return LossOutput(loss, logits, {'ce': F.cross_entropy(logits.detach(), targets),
                                         'margin': shift.detach().abs().max(1).values.mean()})


def _positive_or_model(value: Any) -> float:
    try:
        return check_positive('lipschitz', value)
    except HyperparameterError:
        raise HyperparameterError('lipschitz', value, "lipschitz must be a number > 0 or 'model' (the model's "
                                                      'declared constant)') from None


@register_loss('hkr')
class HingeKR(Objective):
    """The soft multiclass hinge-Kantorovich-Rubinstein loss of 1-Lipschitz networks (Serrurier et al. 2021; Béthune
    et al. 2022), orthogonium's ``SoftHKRMulticlassLoss``: ``alpha`` weighs the hinge (margin ``min_margin``, in
    logit units) against the KR term. Its running mean of |logits| sets the softmax temperature; it is part of the
    objective's state, so a resumed run continues it."""

    display_name = 'hinge-KR'
    abbrev = {'alpha': 'a', 'min_margin': 'mm', 'temperature': 't'}
    tag_always = ('alpha', 'min_margin')

    def __init__(self, alpha: float = 0.98, min_margin: float = 1.0, temperature: float = 1.0, *,
                 mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None,
                 seed: Optional[int] = None):
        super().__init__(mean=mean, std=std, seed=seed)
        self.alpha = float(alpha) if _is_fraction(alpha) else _bad_alpha(alpha)
        self.min_margin = check_positive('min_margin', min_margin)
        self.temperature = check_positive('temperature', temperature)
        self._loss = orthogonium_losses.SoftHKRMulticlassLoss(alpha=self.alpha, min_margin=self.min_margin,
                                           temperature=self.temperature)

    def state_dict(self) -> Dict[str, Any]:
        return {**super().state_dict(), 'hkr_mean': self._loss.current_mean.tolist()}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        state = dict(state)
        if 'hkr_mean' in state:
            self._loss.current_mean = torch.tensor(state.pop('hkr_mean'), dtype=torch.float32)
        super().load_state_dict(state)

    def __call__(self, model, images, targets) -> LossOutput:
        logits = full_precision(self.forward_model(model, images))
        loss = self._loss(logits, targets)
        return LossOutput(loss, logits, {'ce': F.cross_entropy(logits.detach(), targets),
                                         'hkr_mean': self._loss.current_mean.detach().reshape(())})


def _is_fraction(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0.0 <= float(value) <= 1.0


def _bad_alpha(value: Any) -> float:
    raise HyperparameterError('alpha', value, 'alpha must be a number in [0, 1] (1: hinge only, 0: KR only)')

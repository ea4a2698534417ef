"""Worst-direction searches and the adversarial-training peers, in [0,1] pixel space through the model's
normalization (as the paper's noise).

- :func:`hinge_perturbation` points the hinge's ``perturbation='adversarial'`` at the worst direction
  (:func:`timm_lipschitz.ratio.worst_direction`, the search the evaluation's PGD lower bound runs too).
- :func:`pgd_attack` is projected gradient ascent of a loss within an L2 or L-inf ball and the [0,1] box, from a
  random start: the training attack of ``pgd_adversarial`` (Madry et al. 2018) and ``trades`` (Zhang et al. 2019).
  ART stays the evaluation's attack library, so training and evaluation attacks are not the same code.

Searches run with BatchNorm in eval mode (running statistics, as TRADES's reference code does) and without
gradients into the weights; the training forward that follows runs in the model's own mode. Random starts come
from the objective's own noise stream, so they are saved with the training state and resumed. Each search costs
``steps`` forward-backward passes: a step of these objectives costs about (steps + 2) times a cross-entropy step.
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

from .._lazy import lazy_module
from ..modes import eval_mode
from ..ratio import per_sample_norm as _per_sample_norm, worst_direction
from .base import LossOutput, Objective, check_choice, check_count, check_non_negative, check_positive, full_precision
from .registry import register_loss

torch = lazy_module('torch', __name__)
F = lazy_module('torch.nn.functional', __name__)

__all__ = ['pgd_attack', 'hinge_perturbation', 'PGDAdversarial', 'Trades', 'NORMS']

NORMS = ('l2', 'linf')
_EPS = 1e-12


def _project(delta, norm: str, epsilon: float, images):
    """``delta`` projected on the ``norm`` ball of radius ``epsilon`` and on the [0,1] box around ``images``."""
    if norm == 'linf':
        delta = delta.clamp(-epsilon, epsilon)
    else:
        delta = delta * (epsilon / _per_sample_norm(delta).clamp_min(_EPS)).clamp(max=1.0)
    return (images + delta).clamp(0, 1) - images


def pgd_attack(objective: Callable[[Any], Any], images, norm: str, epsilon: float, steps: int, step_size: float,
               start) -> Any:
    """Projected gradient ascent of ``objective(adversarial images)`` (a per-batch scalar) within the ``norm`` ball of
    radius ``epsilon`` and the [0,1] box, from ``images + start`` (projected). Steps: the sign of the gradient
    (L-inf) or the gradient scaled to length ``step_size`` (L2). Returns the adversarial images, detached."""
    delta = _project(start, norm, epsilon, images).detach()
    for _ in range(steps):
        delta.requires_grad_(True)
        grad, = torch.autograd.grad(objective(images + delta), delta)
        with torch.no_grad():
            step = grad.sign() if norm == 'linf' else grad / _per_sample_norm(grad).clamp_min(_EPS)
            delta = _project(delta + step_size * step, norm, epsilon, images)
    return (images + delta).detach()


class _Adversarial(Objective):
    """What the adversarial objectives share: the threat model (norm, epsilon, steps, step size) and the attack."""

    def __init__(self, norm: str, epsilon: float, steps: int, step_size: Optional[float], *,
                 mean: Optional[Sequence[float]], std: Optional[Sequence[float]], seed: Optional[int]):
        super().__init__(mean=mean, std=std, seed=seed)
        self.norm = check_choice('norm', norm, NORMS)
        self.epsilon = check_positive('epsilon', epsilon)
        self.steps = check_count('steps', steps)
        self.step_size = None if step_size is None else check_positive('step_size', step_size)

    def attack_step(self) -> float:
        """The attack's step: as given, else 2.5 epsilon / steps (Madry et al.'s rule, ART's default in evaluation)."""
        return self.step_size if self.step_size is not None else 2.5 * self.epsilon / self.steps

    def random_start(self, images):
        """Uniform in the L-inf ball, or a Gaussian direction of length up to epsilon in the L2 ball, drawn from the
        objective's noise stream (saved and resumed with the training state)."""
        z = self.noise_like(images, 1.0)
        if self.norm == 'linf':
            return self.epsilon * (2 * torch.special.ndtr(z) - 1)  # uniform in [-eps, eps] from a normal draw
        u = torch.special.ndtr(self.noise_like(images[:, :1, :1, :1], 1.0))  # one uniform number per image
        return self.epsilon * u * z / _per_sample_norm(z).clamp_min(_EPS)

    def adversarial(self, model, images, loss_of_logits: Callable[[Any], Any]):
        """The attack in pixel space through the model's normalization, BatchNorm in eval mode, no weight grads."""
        with eval_mode(model), torch.enable_grad():
            return pgd_attack(lambda x: loss_of_logits(self.forward_model(model, x)), images.detach(), self.norm,
                              self.epsilon, self.steps, self.attack_step(), self.random_start(images))


@register_loss('pgd_adversarial')
class PGDAdversarial(_Adversarial):
    """Cross-entropy on PGD examples (Madry et al. 2018, "Towards deep learning models resistant to adversarial
    attacks"): the attack maximizes the cross-entropy within the ``norm`` ball of radius ``epsilon``."""

    display_name = 'PGD-AT'
    abbrev = {'norm': 'n', 'epsilon': 'e', 'steps': 'k', 'step_size': 'a'}
    tag_always = ('norm', 'epsilon')

    def __init__(self, norm: str = 'l2', epsilon: float = 0.5, steps: int = 5, step_size: Optional[float] = None, *,
                 mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None,
                 seed: Optional[int] = None):
        super().__init__(norm, epsilon, steps, step_size, mean=mean, std=std, seed=seed)

    def __call__(self, model, images, targets) -> LossOutput:
        adv = self.adversarial(model, images, lambda logits: F.cross_entropy(full_precision(logits), targets))
        adv_logits = self.forward_model(model, adv)
        loss = F.cross_entropy(full_precision(adv_logits), targets)
        logits = self.clean_logits(model, images)
        return LossOutput(loss, logits, {'ce_adversarial': loss.detach(),
                                         'adversarial_acc': (adv_logits.argmax(1) == targets).float().mean()})


@register_loss('trades')
class Trades(_Adversarial):
    """CE(f(x), y) + beta * KL(softmax f(x) || softmax f(x')) with x' maximizing that KL in the ``norm`` ball (Zhang
    et al. 2019, "Theoretically principled trade-off between robustness and accuracy"); beta 6 as in their paper."""

    display_name = 'TRADES'
    abbrev = {'beta': 'b', 'norm': 'n', 'epsilon': 'e', 'steps': 'k', 'step_size': 'a'}
    tag_always = ('beta', 'norm', 'epsilon')

    def __init__(self, beta: float = 6.0, norm: str = 'l2', epsilon: float = 0.5, steps: int = 5,
                 step_size: Optional[float] = None, *, mean: Optional[Sequence[float]] = None,
                 std: Optional[Sequence[float]] = None, seed: Optional[int] = None):
        super().__init__(norm, epsilon, steps, step_size, mean=mean, std=std, seed=seed)
        self.beta = check_non_negative('beta', beta)

    @staticmethod
    def _kl(clean_log_p, logits):
        return F.kl_div(F.log_softmax(full_precision(logits), 1), clean_log_p, log_target=True, reduction='batchmean')

    def random_start(self, images):
        """TRADES starts 0.001 * N(0, 1) away from x (their reference code), from the objective's noise stream."""
        return self.noise_like(images, 0.001)

    def __call__(self, model, images, targets) -> LossOutput:
        with eval_mode(model), torch.no_grad():
            clean_log_p = F.log_softmax(full_precision(self.forward_model(model, images)), 1)
        adv = self.adversarial(model, images, lambda logits: self._kl(clean_log_p, logits))
        b = images.shape[0]
        both = full_precision(self.forward_model(model, torch.cat([images, adv])))
        logits, adv_logits = both[:b], both[b:]
        ce = F.cross_entropy(logits, targets)
        kl = self._kl(F.log_softmax(logits, 1), adv_logits)
        return LossOutput(ce + self.beta * kl, logits, {'ce': ce.detach(), 'kl': kl.detach()})


def hinge_perturbation(objective, model, images, radius: float, steps: int, step_size: float, output: str):
    """The hinge's worst-direction perturbation: :func:`worst_direction` from a start drawn from the objective's
    noise stream, with BatchNorm in eval mode and no gradient into the weights (the search is not trained
    through)."""
    with eval_mode(model), torch.enable_grad():
        d, _ = worst_direction(lambda x: objective.forward_model(model, x), images.detach(), radius, steps,
                               step_size, objective.noise_like(images, 1.0), output)
    return d.detach()


"""The seed paper's objective: task loss plus a hinge on a sampled local Lipschitz estimate.

    x_bar = x + n,  n ~ N(0, sigma^2) per pixel, in [0,1] pixel space (before mean/std normalization)
    k(x)  = ||f(x_bar) - f(x)||_2 / ||x_bar - x||_2                       (per sample)
    L     = mean_i [ L_usual(f(x_i), y_i) + beta * max(0, k(x_i) - L_n) ]

:func:`~.ratio.lipschitz_ratio` is the one implementation of k(x) (in :mod:`.ratio`, re-exported here): the loss,
the worst-direction search, the evaluation's sampled k and its PGD lower bound all call it.

BatchNorm: by default the clean and noisy batches go through the model in ONE concatenated forward. Both halves
are then normalized with the same batch statistics, so f(x_bar) - f(x) is the difference of one function at two
points (as at evaluation time, where BN uses fixed running statistics). Two separate forwards would give the two
halves different BN statistics and k(x) would partly measure the statistics gap rather than input
sensitivity. One forward of a 2B batch is also cheaper than two forwards of B. ``joint_forward=False`` gives
the two-forward variant for comparison (the benchmarks report what it changes).
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Tuple, Union

from .._lazy import lazy_module
from ..ratio import ADVERSARIAL_STEP, OUTPUTS, lipschitz_ratio, model_output
from .adversarial import hinge_perturbation
from .base import (HyperparameterError, LossOutput, Objective, check_choice, check_count, check_non_negative,
                   check_positive)
from .registry import create_loss, list_losses, loss_class, register_loss
from .standard import TaskLoss

torch = lazy_module('torch', __name__)
F = lazy_module('torch.nn.functional', __name__)

__all__ = ['LipschitzHinge', 'lipschitz_ratio', 'model_output', 'OUTPUTS', 'PERTURBATIONS', 'build_task_loss']

PERTURBATIONS = ('gaussian', 'adversarial')


def task_losses() -> list:
    """Registered losses of the clean logits alone: what ``task_loss`` may name."""
    return [n for n in list_losses() if issubclass(loss_class(n), TaskLoss)]


def build_task_loss(task_loss: Union[str, Dict[str, Any], TaskLoss]) -> TaskLoss:
    """A logits-level loss by registered name, ``{'name': ..., **kwargs}``, or an instance."""
    if isinstance(task_loss, TaskLoss):
        return task_loss
    kwargs: Dict[str, Any] = {}
    name = task_loss
    if isinstance(task_loss, dict):
        kwargs = dict(task_loss)
        name = kwargs.pop('name', None)
    if name not in task_losses():
        raise HyperparameterError('task_loss', task_loss, f'it must be a loss of the clean logits: {task_losses()}')
    try:
        return create_loss(name, seed=0, **kwargs)
    except HyperparameterError as e:
        raise e.renamed('task_loss.') from None


@register_loss('lipschitz_hinge')
class LipschitzHinge(Objective):
    """L_usual(f(x), y) + beta * max(0, k(x) - L_n), Usama & Chang. Gradients flow through f(x) and f(x_bar).

    Args:
        sigma: std of the Gaussian pixel noise (sigma_train), > 0.
        beta: weight of the hinge, >= 0 (0 trains on the task loss alone, but BatchNorm still sees noisy images).
        lipschitz_target: L_n, the hinge threshold, > 0.
        output: 'logits' (default) or 'probs' - the space f is measured in.
        clip: clamp x_bar to [0, 1] (off in the paper; ||x_bar - x|| is then measured after clipping).
        task_loss: L_usual, a registered logits-level loss name or ``{'name': ..., **kwargs}``.
        joint_forward: one concatenated forward of clean + noisy images (default, see module doc).
        perturbation: 'gaussian' (the paper: n ~ N(0, sigma^2), default) or 'adversarial': the direction that
            maximizes k(x) on the L2 sphere of ``radius`` found by ``steps`` gradient steps
            (:func:`~.adversarial.worst_direction`, BatchNorm in eval mode, no gradient through the search). Gaussian
            noise at sigma 0.5 on a 1x32x32 image has norm ~16: ``radius`` is not sigma.
        radius: the L2 norm of the adversarial perturbation, > 0 (ignored for 'gaussian').
        steps: gradient steps of the adversarial search, >= 1 (ignored for 'gaussian').
    """

    display_name = 'hinge'
    abbrev = {'sigma': 's', 'beta': 'b', 'lipschitz_target': 'l', 'output': 'o', 'clip': 'clip',
              'task_loss': 'task', 'joint_forward': 'joint', 'perturbation': 'pert', 'radius': 'r', 'steps': 'k'}
    tag_always = ('sigma', 'beta', 'lipschitz_target')

    def __init__(self, sigma: float = 0.25, beta: float = 1.0, lipschitz_target: float = 0.1,
                 output: str = 'logits', clip: bool = False,
                 task_loss: Union[str, Dict[str, Any]] = 'cross_entropy', joint_forward: bool = True,
                 perturbation: str = 'gaussian', radius: float = 0.5, steps: int = 3, *,
                 mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None,
                 seed: Optional[int] = None):
        super().__init__(mean=mean, std=std, seed=seed)
        self.sigma = check_positive('sigma', sigma)
        self.beta = check_non_negative('beta', beta)
        self.lipschitz_target = check_positive('lipschitz_target', lipschitz_target)
        self.output = check_choice('output', output, OUTPUTS)
        self.clip = bool(clip)
        self.joint_forward = bool(joint_forward)
        self.task_loss = task_loss
        self.task = build_task_loss(task_loss)
        self.perturbation = check_choice('perturbation', perturbation, PERTURBATIONS)
        self.radius = check_positive('radius', radius)
        self.steps = check_count('steps', steps)

    @classmethod
    def is_paper_variant(cls, hparams: Dict[str, Any]) -> bool:
        """Hinge on logits, one joint forward, no clipping, cross-entropy task loss: the paper's method."""
        return (hparams.get('output') == 'logits' and not hparams.get('clip') and hparams.get('joint_forward')
                and hparams.get('task_loss') == 'cross_entropy' and hparams.get('perturbation', 'gaussian') ==
                'gaussian')

    def perturb(self, images, model=None):
        if self.perturbation == 'gaussian':
            noisy = images + self.noise_like(images, self.sigma)
        else:
            noisy = images + hinge_perturbation(self, model, images, self.radius, self.steps, ADVERSARIAL_STEP,
                                                self.output)
        return noisy.clamp(0, 1) if self.clip else noisy

    def logits_pair(self, model, images, noisy) -> Tuple[Any, Any]:
        if self.joint_forward:
            both = self.forward_model(model, torch.cat([images, noisy]))
            return both[:images.shape[0]], both[images.shape[0]:]
        return self.forward_model(model, images), self.forward_model(model, noisy)

    def __call__(self, model, images, targets) -> LossOutput:
        noisy = self.perturb(images, model)
        logits, noisy_logits = self.logits_pair(model, images, noisy)
        task = self.task.criterion(logits, targets)
        k = lipschitz_ratio(logits, noisy_logits, noisy - images, self.output)
        hinge = F.relu(k - self.lipschitz_target)
        loss = task + self.beta * hinge.mean()
        parts = {
            self.task.part_name: task.detach(),
            'k_mean': k.detach().mean(),
            'k_max': k.detach().max(),
            'hinge': hinge.detach().mean(),
            'hinge_active_fraction': (k.detach() > self.lipschitz_target).float().mean(),
        }
        return LossOutput(loss, logits, parts)

"""The seed paper's objective: task loss plus a hinge on a sampled local Lipschitz estimate.

    x_bar = x + n,  n ~ N(0, sigma^2) per pixel, in [0,1] pixel space (before mean/std normalization)
    k(x)  = ||f(x_bar) - f(x)||_2 / ||x_bar - x||_2                       (per sample)
    L     = mean_i [ L_usual(f(x_i), y_i) + beta * max(0, k(x_i) - L_n) ]

BatchNorm: by default the clean and noisy batches go through the model in ONE concatenated forward. Both halves
are then normalized with the same batch statistics, so f(x_bar) - f(x) is the difference of one function at two
points (as at evaluation time, where BN uses fixed running statistics). Two separate forwards would give the two
halves different BN statistics and k(x) would partly measure the statistics gap rather than input
sensitivity. One forward of a 2B batch is also cheaper than two forwards of B. ``joint_forward=False`` gives
the two-forward variant for comparison (the benchmarks report what it changes).
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import LossOutput, Objective, check_non_negative, check_positive, full_precision
from .registry import create_loss, list_losses, loss_class, register_loss
from .standard import TaskLoss

__all__ = ['LipschitzHinge', 'lipschitz_ratio', 'OUTPUTS', 'build_task_loss']

OUTPUTS = ('logits', 'probs')
_EPS = 1e-12


def lipschitz_ratio(out_clean: torch.Tensor, out_noisy: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """Per-sample k = ||out_noisy - out_clean|| / ||delta||, computed in float32 whatever the autocast dtype.

    A zero input difference (possible only with clipping) has a zero output difference, and gives k = 0.
    """
    num = (full_precision(out_noisy) - full_precision(out_clean)).flatten(1).norm(dim=1)
    den = full_precision(delta).flatten(1).norm(dim=1)
    return num / den.clamp_min(_EPS)


def build_task_loss(task_loss: Union[str, Dict[str, Any], TaskLoss]) -> TaskLoss:
    """A logits-level loss by registered name, ``{'name': ..., **kwargs}``, or an instance."""
    if isinstance(task_loss, TaskLoss):
        return task_loss
    kwargs: Dict[str, Any] = {}
    if isinstance(task_loss, dict):
        kwargs = dict(task_loss)
        task_loss = kwargs.pop('name', None)
    allowed = [n for n in list_losses() if issubclass(loss_class(n), TaskLoss)]
    if task_loss not in allowed:
        raise ValueError(f'task_loss={task_loss!r} is not allowed; it must be a loss of the clean logits: {allowed}.')
    return create_loss(task_loss, **kwargs)


def model_output(logits: torch.Tensor, output: str) -> torch.Tensor:
    """The space k(x) is measured in: raw logits, or softmax probabilities (Theorem 1's label space)."""
    logits = full_precision(logits)
    return logits if output == 'logits' else F.softmax(logits, dim=1)


@register_loss('lipschitz_hinge')
class LipschitzHinge(Objective):
    """L_usual(f(x), y) + beta * max(0, k(x) - L_n), Usama & Chang. Gradients flow through f(x) and f(x_bar).

    Args:
        sigma: std of the Gaussian pixel noise (sigma_train), > 0.
        beta: weight of the hinge, >= 0 (0 is standard training).
        lipschitz_target: L_n, the hinge threshold, > 0.
        output: 'logits' (default) or 'probs' - the space f is measured in.
        clip: clamp x_bar to [0, 1] (off in the paper; ||x_bar - x|| is then measured after clipping).
        task_loss: L_usual, a registered logits-level loss name or ``{'name': ..., **kwargs}``.
        joint_forward: one concatenated forward of clean + noisy images (default, see module doc).
    """

    def __init__(self, sigma: float = 0.25, beta: float = 1.0, lipschitz_target: float = 0.1,
                 output: str = 'logits', clip: bool = False,
                 task_loss: Union[str, Dict[str, Any]] = 'cross_entropy', joint_forward: bool = True, *,
                 mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None,
                 seed: Optional[int] = None):
        super().__init__(mean=mean, std=std, seed=seed)
        self.sigma = check_positive('sigma', sigma)
        self.beta = check_non_negative('beta', beta)
        self.lipschitz_target = check_positive('lipschitz_target', lipschitz_target)
        if output not in OUTPUTS:
            raise ValueError(f'output={output!r} is not allowed; choose one of {OUTPUTS}.')
        self.output = output
        self.clip = bool(clip)
        self.joint_forward = bool(joint_forward)
        self.task_loss_spec = task_loss
        self.task = build_task_loss(task_loss)

    def hparams(self) -> Dict[str, Any]:
        return {'sigma': self.sigma, 'beta': self.beta, 'lipschitz_target': self.lipschitz_target,
                'output': self.output, 'clip': self.clip, 'task_loss': self.task_loss_spec,
                'joint_forward': self.joint_forward}

    def perturb(self, images: torch.Tensor) -> torch.Tensor:
        noisy = images + self.noise_like(images, self.sigma)
        return noisy.clamp(0, 1) if self.clip else noisy

    def logits_pair(self, model: nn.Module, images: torch.Tensor,
                    noisy: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        if self.joint_forward:
            both = self.forward_model(model, torch.cat([images, noisy]))
            return both[:images.shape[0]], both[images.shape[0]:]
        return self.forward_model(model, images), self.forward_model(model, noisy)

    def __call__(self, model: nn.Module, images: torch.Tensor, targets: torch.Tensor) -> LossOutput:
        noisy = self.perturb(images)
        logits, noisy_logits = self.logits_pair(model, images, noisy)
        task = self.task.criterion(logits, targets)
        k = lipschitz_ratio(model_output(logits, self.output), model_output(noisy_logits, self.output),
                            noisy - images)
        hinge = F.relu(k - self.lipschitz_target)
        loss = task + self.beta * hinge.mean()
        parts = {
            'ce': task.detach(),
            'k_mean': k.detach().mean(),
            'k_max': k.detach().max(),
            'hinge': hinge.detach().mean(),
            'hinge_active_fraction': (k.detach() > self.lipschitz_target).float().mean(),
        }
        return LossOutput(loss, logits, parts)

"""Standard training objectives; they double as the task loss L_usual of the noise-robust objectives."""
from __future__ import annotations

from typing import Any, Dict, Optional, Sequence

from .._lazy import lazy_module
from .base import HyperparameterError, LossOutput, Objective, check_non_negative, full_precision
from .registry import register_loss

F = lazy_module('torch.nn.functional', __name__)
timm_loss = lazy_module('timm.loss', __name__)

__all__ = ['CrossEntropy', 'BinaryCrossEntropyLoss', 'TaskLoss']


class TaskLoss(Objective):
    """An objective that is a function of clean logits alone, so others can use it as their L_usual.

    ``part_name`` is how its value is logged, by itself and as the task part of another objective.
    """

    part_name = 'task'

    def criterion(self, logits, targets):
        raise NotImplementedError

    def __call__(self, model, images, targets) -> LossOutput:
        logits = self.forward_model(model, images)
        loss = self.criterion(logits, targets)
        return LossOutput(loss, logits, {self.part_name: loss.detach()})


@register_loss('cross_entropy')
class CrossEntropy(TaskLoss):
    """Cross-entropy on clean images (standard training; the paper's beta = 0)."""

    display_name = 'standard'
    part_name = 'ce'
    abbrev = {'label_smoothing': 'ls'}

    def __init__(self, label_smoothing: float = 0.0, *, mean: Optional[Sequence[float]] = None,
                 std: Optional[Sequence[float]] = None, seed: Optional[int] = None):
        super().__init__(mean=mean, std=std, seed=seed)
        self.label_smoothing = check_non_negative('label_smoothing', label_smoothing)
        if self.label_smoothing >= 1:
            raise HyperparameterError('label_smoothing', label_smoothing, 'it must be in [0, 1)')

    @classmethod
    def is_standard(cls, hparams: Dict[str, Any]) -> bool:
        return True

    def criterion(self, logits, targets):
        return F.cross_entropy(full_precision(logits), targets, label_smoothing=self.label_smoothing)


@register_loss('binary_cross_entropy')
class BinaryCrossEntropyLoss(TaskLoss):
    """timm's BinaryCrossEntropy (one-vs-all sigmoid loss with smoothing), as used by its ResNet strikes back."""

    part_name = 'bce'
    abbrev = {'smoothing': 'sm'}

    def __init__(self, smoothing: float = 0.0, *, mean: Optional[Sequence[float]] = None,
                 std: Optional[Sequence[float]] = None, seed: Optional[int] = None):
        super().__init__(mean=mean, std=std, seed=seed)
        self.smoothing = check_non_negative('smoothing', smoothing)
        self._loss = None  # timm's loss, built on first use (importing timm takes seconds)

    def criterion(self, logits, targets):
        if self._loss is None:
            self._loss = timm_loss.BinaryCrossEntropy(smoothing=self.smoothing)
        return self._loss(full_precision(logits), targets)

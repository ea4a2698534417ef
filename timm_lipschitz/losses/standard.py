"""Standard training objectives; they double as the task loss L_usual of the noise-robust objectives."""
from __future__ import annotations

from typing import Any, Dict, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.loss import BinaryCrossEntropy

from .base import LossOutput, Objective, check_non_negative, full_precision
from .registry import register_loss

__all__ = ['CrossEntropy', 'BinaryCrossEntropyLoss', 'TaskLoss']


class TaskLoss(Objective):
    """An objective that is a function of clean logits alone, so others can use it as their L_usual."""

    def criterion(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, model: nn.Module, images: torch.Tensor, targets: torch.Tensor) -> LossOutput:
        logits = self.forward_model(model, images)
        loss = self.criterion(logits, targets)
        return LossOutput(loss, logits, {'ce': loss.detach()})


@register_loss('cross_entropy')
class CrossEntropy(TaskLoss):
    """Cross-entropy on clean images (standard training; the paper's beta = 0)."""

    def __init__(self, label_smoothing: float = 0.0, *, mean: Optional[Sequence[float]] = None,
                 std: Optional[Sequence[float]] = None, seed: Optional[int] = None):
        super().__init__(mean=mean, std=std, seed=seed)
        self.label_smoothing = check_non_negative('label_smoothing', label_smoothing)
        if self.label_smoothing >= 1:
            raise ValueError(f'label_smoothing={label_smoothing!r} is not allowed; it must be in [0, 1).')

    def hparams(self) -> Dict[str, Any]:
        return {'label_smoothing': self.label_smoothing}

    def criterion(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(full_precision(logits), targets, label_smoothing=self.label_smoothing)


@register_loss('binary_cross_entropy')
class BinaryCrossEntropyLoss(TaskLoss):
    """timm's BinaryCrossEntropy (one-vs-all sigmoid loss with smoothing), as used by its ResNet strikes back."""

    def __init__(self, smoothing: float = 0.0, *, mean: Optional[Sequence[float]] = None,
                 std: Optional[Sequence[float]] = None, seed: Optional[int] = None):
        super().__init__(mean=mean, std=std, seed=seed)
        self.smoothing = check_non_negative('smoothing', smoothing)
        self._loss = BinaryCrossEntropy(smoothing=self.smoothing)

    def hparams(self) -> Dict[str, Any]:
        return {'smoothing': self.smoothing}

    def criterion(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self._loss(full_precision(logits), targets)

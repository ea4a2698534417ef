"""Loss factory: ``create_loss(name, **kwargs)`` builds an objective ``objective(model, images, targets)``.

Registered: ``cross_entropy``, ``binary_cross_entropy``, ``lipschitz_hinge`` (the seed paper),
``gaussian_augmentation``, ``stability``, ``consistency``. Register more with ``@register_loss(name)`` on an
:class:`Objective` subclass.
"""
from .base import LossOutput, Objective
from .lipschitz import OUTPUTS, LipschitzHinge, lipschitz_ratio
from .peers import Consistency, GaussianAugmentation, Stability
from .registry import create_loss, list_losses, loss_arguments, loss_class, register_loss
from .standard import BinaryCrossEntropyLoss, CrossEntropy, TaskLoss

__all__ = ['LossOutput', 'Objective', 'TaskLoss', 'create_loss', 'list_losses', 'register_loss', 'loss_class',
           'loss_arguments', 'CrossEntropy', 'BinaryCrossEntropyLoss', 'LipschitzHinge', 'GaussianAugmentation',
           'Stability', 'Consistency', 'lipschitz_ratio', 'OUTPUTS']

"""Loss factory: ``create_loss(name, **kwargs)`` builds an objective ``objective(model, images, targets)``.

Registered: ``cross_entropy``, ``binary_cross_entropy``, ``lipschitz_hinge`` (the seed paper; its
``perturbation='adversarial'`` points the hinge at the worst direction), ``gaussian_augmentation``, ``stability``,
``consistency``, the adversarial peers ``pgd_adversarial`` (Madry et al.) and ``trades`` (Zhang et al.), and
``lipschitz_margin`` (Tsuzuku et al.: the margin a Lipschitz certificate needs) and ``hkr`` (the hinge-KR loss of
1-Lipschitz networks, orthogonium's).
Register more with ``@register_loss(name)`` on an
:class:`Objective` subclass (see the README's "Add your own objective"). Importing this package does not import
torch: the command line reads the objectives' arguments to validate a recipe before torch is loaded.
"""
from ..ratio import worst_direction
from .adversarial import PGDAdversarial, Trades, pgd_attack
from .base import HyperparameterError, LossOutput, Objective
from .lipschitz import OUTPUTS, LipschitzHinge, build_task_loss, lipschitz_ratio, model_output
from .margin import HingeKR, LipschitzMargin
from .noise import NoiseStream
from .peers import Consistency, GaussianAugmentation, Stability
from .registry import create_loss, list_losses, loss_arguments, loss_class, register_loss
from .standard import BinaryCrossEntropyLoss, CrossEntropy, TaskLoss

__all__ = ['LossOutput', 'Objective', 'TaskLoss', 'HyperparameterError', 'create_loss', 'list_losses',
           'register_loss', 'loss_class', 'loss_arguments', 'CrossEntropy', 'BinaryCrossEntropyLoss',
           'LipschitzHinge', 'GaussianAugmentation', 'Stability', 'Consistency', 'lipschitz_ratio', 'model_output',
           'build_task_loss', 'OUTPUTS', 'NoiseStream', 'PGDAdversarial', 'Trades', 'pgd_attack', 'worst_direction',
           'LipschitzMargin', 'HingeKR']

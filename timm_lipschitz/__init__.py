"""timm-lipschitz: noise-robust image classifiers with the Lipschitz hinge loss (Usama & Chang), as a timm plugin.

``import timm_lipschitz`` registers the CIFAR ResNet/PreResNet family and the paper's MNIST net with timm, so
``timm.create_model("cifar_resnet20")`` works like any built-in model.
"""
__version__ = '0.1.0'

from . import models  # noqa: F401  (registers the models with timm)
from .models import list_registered
from .losses import LossOutput, create_loss, list_losses, register_loss

__all__ = ["__version__", "models", "list_registered", "create_loss", "list_losses", "register_loss", "LossOutput"]

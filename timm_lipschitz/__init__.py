"""timm-lipschitz: noise-robust image classifiers with the Lipschitz hinge loss (Usama & Chang), as a timm plugin.

It ships the paper's method (the ``lipschitz_hinge`` objective and its peers, :func:`create_loss`), 1-Lipschitz
networks whose declared constant certifies each prediction (``lip_convnet``, ``cifar_lipresnet_*``;
:func:`certify`, :mod:`.certificates`), and the CIFAR ResNet/PreResNet family and the paper's MNIST net.

``import timm_lipschitz`` registers the models with timm, so ``timm.create_model("cifar_resnet20")`` works like any
built-in model. timm has no plugin entry points, so the
import is the registration. It happens at once when timm is already imported, and otherwise the moment timm is
imported (an import hook): ``import timm_lipschitz`` itself loads neither torch nor timm, which keeps the command
line's ``--help`` and recipe checks fast.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

from . import certificates  # torch-free at import, as are the objectives: torch loads on first use
from ._lazy import lazy_module
from .certificates import certify
from .losses import LossOutput, Objective, create_loss, list_losses, register_loss

__version__ = '0.3.0'

__all__ = ['__version__', 'models', 'list_registered', 'create_loss', 'list_losses', 'register_loss', 'LossOutput',
           'Objective', 'certify', 'certificates']

models = lazy_module(f'{__name__}.models', __name__)  # torch and timm load on first use (or when timm is imported)


def list_registered() -> list:
    """Names of the architectures this package registers with timm."""
    return models.list_registered()


def _register_models() -> None:
    importlib.import_module(f'{__name__}.models')


class _RegisterAfterTimm(importlib.abc.MetaPathFinder):
    """Imports ``timm_lipschitz.models`` (which registers the models) right after timm finishes importing."""

    def find_spec(self, fullname, path, target=None):  # noqa: ANN001 (importlib protocol)
        if fullname != 'timm':
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec('timm')
        if spec is None or spec.loader is None:
            return spec
        loader = spec.loader

        class _Loader(importlib.abc.Loader):
            def create_module(self, spec):  # noqa: ANN001
                return loader.create_module(spec)

            def exec_module(self, module):  # noqa: ANN001
                module.__spec__.loader = module.__loader__ = loader  # timm sees its own loader
                loader.exec_module(module)
                _register_models()

        spec.loader = _Loader()
        return spec


def _install() -> None:
    if 'timm' in sys.modules:
        _register_models()
    elif not any(isinstance(f, _RegisterAfterTimm) for f in sys.meta_path):
        sys.meta_path.insert(0, _RegisterAfterTimm())


_install()

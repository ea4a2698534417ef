"""RobustBench entry points: a model exported with ``timm-lipschitz export --robustbench`` registered with timm.

RobustBench's ``load_model(name, dataset=..., threat_model=...)`` first looks for a timm model called
``<name lower-cased, '-' -> '_'>_<dataset>_<threat lower-cased>`` and, if timm knows it, returns
``timm.create_model(that, num_classes=..., pretrained=True, checkpoint_path=...).eval()``. Its zoo models take
[0,1] pixels and normalize inside ``forward``. :class:`RobustBenchModel` is that wrapper around any model of this
package (the normalization as buffers, saved with the weights). Exports are listed in
``$TIMM_LIPSCHITZ_HOME/robustbench/index.json`` (default ``~/.cache/timm_lipschitz``); importing this module
registers each one, so ``import timm_lipschitz`` before RobustBench's ``load_model`` is all a user adds.
"""
from __future__ import annotations

import json
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import timm
import torch
import torch.nn as nn
from timm.models import generate_default_cfgs, register_model
from timm.models._registry import _model_entrypoints

from ..modes import for_inference
from ._pretrained import build

__all__ = ['RobustBenchModel', 'entry_name', 'exports_index', 'register_export', 'register_exports']

default_cfgs: Dict[str, Any] = {}  # timm's register_model reads the entry's cfg from its module's default_cfgs


class RobustBenchModel(nn.Module):
    """``model((x - mean) / std)`` for ``x`` in [0,1] pixels: a classifier in RobustBench's form."""

    def __init__(self, arch: str, mean: Sequence[float], std: Sequence[float], input_size: Sequence[int],
                 num_classes: int = 10, model_args: Optional[Dict[str, Any]] = None, **kwargs: Any) -> None:
        super().__init__()
        kwargs.pop('pretrained_cfg', None), kwargs.pop('pretrained_cfg_overlay', None), kwargs.pop('in_chans', None)
        # the input size at creation: models with a fixed input size (mnist_convnet) size their layers by it
        model = timm.create_model(arch, pretrained=False, num_classes=num_classes, in_chans=int(input_size[0]),
                                  pretrained_cfg_overlay={'input_size': tuple(input_size)},
                                  **{**(model_args or {}), **kwargs})
        self._hold(model, mean, std)

    @classmethod
    def wrap(cls, model: nn.Module, mean: Sequence[float], std: Sequence[float]) -> 'RobustBenchModel':
        """A trained model of this package in RobustBench's form (its weights, not a fresh model's)."""
        self = cls.__new__(cls)
        nn.Module.__init__(self)
        self._hold(model, mean, std)
        return self

    def _hold(self, model: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        self.model = model
        self.num_classes = model.num_classes
        self.register_buffer('mean', torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer('std', torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model((x - self.mean) / self.std)


def entry_name(name: str, dataset: str, threat: str) -> str:
    """The timm name RobustBench's ``load_model`` looks up (Name2026Word, cifar10, L2 -> name2026word_cifar10_l2)."""
    return f"{name.lower().replace('-', '_')}_{dataset.lower()}_{threat.lower()}"


def exports_home() -> Path:
    return Path(os.environ.get('TIMM_LIPSCHITZ_HOME', Path.home() / '.cache' / 'timm_lipschitz')) / 'robustbench'


def exports_index() -> Dict[str, Dict[str, Any]]:
    """entry name -> {'folder', 'arch', 'model_args', 'num_classes', 'input_size', 'mean', 'std'}."""
    index = exports_home() / 'index.json'
    if not index.is_file():
        return {}
    try:
        return json.loads(index.read_text())
    except (OSError, ValueError) as e:
        warnings.warn(f'{index} is unreadable ({e}); no RobustBench export is registered.')
        return {}


def register_export(entry: str, spec: Dict[str, Any]) -> None:
    """Register one export with timm under ``entry`` (its weights: ``<folder>/model.safetensors``)."""
    channels = int(spec['input_size'][0])
    default_cfgs.update(generate_default_cfgs({entry: {
        'file': str(Path(spec['folder']) / 'model.safetensors'), 'num_classes': spec['num_classes'],
        'input_size': tuple(spec['input_size']), 'crop_pct': spec.get('crop_pct', 1.0), 'interpolation': 'bilinear',
        'mean': (0.0,) * channels, 'std': (1.0,) * channels,  # the model normalizes: timm's transform must not
        'first_conv': f"model.{spec.get('first_conv', 'conv1')}", 'classifier': f"model.{spec.get('classifier', 'fc')}",
        'license': 'apache-2.0'}}))

    def entrypoint(pretrained: bool = False, **kwargs: Any) -> RobustBenchModel:
        model = build(RobustBenchModel, entry, pretrained, arch=spec['arch'], mean=spec['mean'], std=spec['std'],
                      input_size=spec['input_size'], model_args=spec.get('model_args') or {},
                      **{'num_classes': spec['num_classes'], **kwargs})
        return for_inference(model)  # RobustBench's models are used in eval mode

    entrypoint.__name__ = entrypoint.__qualname__ = entry
    entrypoint.__module__ = __name__
    if entry in _model_entrypoints:  # a re-export in this process replaces the earlier one
        _model_entrypoints.pop(entry)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # timm warns when a name is registered twice
        register_model(entrypoint)
    setattr(sys.modules[__name__], entry, entrypoint)


def register_exports() -> None:
    """Register every export of the index (on import)."""
    for entry, spec in exports_index().items():
        if (Path(spec['folder']) / 'model.safetensors').is_file():
            register_export(entry, spec)


register_exports()

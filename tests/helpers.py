"""What several test files build the same way: a tiny training recipe, a one-point grid of it, the environment of a
child process, and the largest weight difference of two runs (imported as ``from helpers import ...``)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import torch
import torch.nn as nn
import yaml
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parent.parent


def tiny_recipe(out: Any, **over: Any) -> Dict[str, Any]:
    """Six steps of the paper's MNIST net (16 hidden units) on 8x8 digits: a run in about a second."""
    recipe = {'name': 'tiny', 'model': {'name': 'mnist_convnet', 'kwargs': {'hidden_dim': 16}},
              'data': {'name': 'digits', 'input_size': [1, 8, 8], 'fast_path': True},
              'loss': {'name': 'cross_entropy'}, 'optimizer': {'name': 'sgd', 'lr': 0.05},
              'steps': 6, 'batch_size': 32, 'eval': {'sigmas': [0.0, 0.3], 'every_epochs': 0}, 'log_with': [],
              'output_dir': str(out)}
    recipe.update(over)
    return recipe


def tiny_grid(tmp_path: Path, steps: int = 2, seeds: Optional[Sequence[int]] = None,
              extra: Optional[Dict[str, Any]] = None) -> Path:
    """A one-point grid of :func:`tiny_recipe` (``grid.yaml`` beside its ``base.yaml``; points in ``sweep/``)."""
    base = tiny_recipe(tmp_path / 'unused', steps=steps, optimizer={'name': 'sgd', 'lr': 0.05,
                                                                    'weight_decay': 0.0005})
    base.pop('output_dir')
    (tmp_path / 'base.yaml').write_text(yaml.safe_dump(base))
    grid = {'name': 'g', 'base': 'base.yaml', 'output_dir': str(tmp_path / 'sweep'),
            'axes': {'loss.name': ['cross_entropy']}, **(extra or {})}
    if seeds is not None:
        grid['seeds'] = seeds
    (tmp_path / 'grid.yaml').write_text(yaml.safe_dump(grid))
    return tmp_path / 'grid.yaml'


def child_env(**extra: str) -> Dict[str, str]:
    """A child process's environment: one thread, this checkout first on the path, the Hub offline."""
    return dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=str(ROOT), HF_HUB_OFFLINE='1', **extra)


def max_weight_diff(a: Any, b: Any) -> float:
    """The largest absolute difference between the weights of two run or checkpoint folders."""
    wa, wb = load_file(str(Path(a) / 'model.safetensors')), load_file(str(Path(b) / 'model.safetensors'))
    return max((wa[k].float() - wb[k].float()).abs().max().item() for k in wa)


class TinyNet(nn.Module):
    """BatchNorm makes the mode matter; a timm-like pretrained_cfg lets the package's helpers read it."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 3)
        self.num_classes = 3
        self.pretrained_cfg = {'input_size': (1, 8, 8), 'mean': (0.5,), 'std': (0.5,)}

    def forward_features(self, x):
        return torch.relu(self.bn(self.conv(x)))

    def forward(self, x):
        return self.fc(self.forward_features(x).mean((2, 3)))

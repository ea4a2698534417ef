"""Noise-robustness evaluation: the evaluation protocol, sigma sweeps, Lipschitz estimates and bounds,
certificates, reports. Submodules load on first use (the protocol is torch-free; the rest needs torch)."""
from __future__ import annotations

import importlib
from typing import Any

from ..protocol import CIFAR10C_GAUSSIAN, MNIST_SIGMAS, PAPER_SIGMAS, PRESETS, TABLE_SIGMAS, parse_sigmas

_LAZY = {
    'noise': ('noise_sweep', 'SweepResult', 'unit_noise', 'batch_unit_noise', 'IndexedDataset', 'noisy_images'),
    'report': ('certificate_comparison', 'sweep_table', 'summary_table', 'plot_sweeps', 'plot_certified',
               'unique_label', 'corruption_table', 'plot_corruption_heatmap', 'plot_corruption_families', 'attack_table', 'plot_attacks', 'demo_grid'),
    'attacks': ('attack_sweep', 'PixelModel'),
    'certify': ('Smooth', 'certify_dataset', 'lower_confidence_bound', 'max_certified_radius',
                'theorem1_radius', 'ABSTAIN'),
    'corruptions': ('corruption_sweep', 'corrupt', 'CORRUPTIONS'),
    'soundness': ('check_declared', 'check_certified_unbroken', 'SoundnessError', 'declared_constant'),
    'lipschitz': ('conv_operator_norm', 'margin_certificate', 'pgd_lower_bound', 'sampled_k', 'jacobian_norm',
                  'spectral_upper_bound'),
}
_WHERE = {name: module for module, names in _LAZY.items() for name in names}

__all__ = ['PAPER_SIGMAS', 'MNIST_SIGMAS', 'TABLE_SIGMAS', 'CIFAR10C_GAUSSIAN', 'PRESETS', 'parse_sigmas',
           *_WHERE]


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f'{__name__}.{_WHERE[name]}'), name)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')

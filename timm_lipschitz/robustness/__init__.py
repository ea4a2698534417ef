"""Noise-robustness evaluation: sigma sweeps, common corruptions, attacks, Lipschitz estimates, randomized smoothing,
reports. The evaluation protocol's constants are :mod:`timm_lipschitz.protocol` (torch-free); the deterministic
certificate is :mod:`timm_lipschitz.certificates`."""
from ..protocol import CIFAR10C_GAUSSIAN, MNIST_SIGMAS, PAPER_SIGMAS, PRESETS, TABLE_SIGMAS, parse_sigmas
from .attacks import PixelModel, attack_sweep
from .certify import ABSTAIN, Smooth, certify_dataset, lower_confidence_bound, max_certified_radius
from .corruptions import CORRUPTIONS, corrupt, corruption_sweep
from .lipschitz import jacobian_norm, pgd_lower_bound, sampled_k
from .noise import IndexedDataset, SweepResult, batch_unit_noise, noise_sweep, noisy_images, unit_noise
from .report import (attack_table, certificate_comparison, corruption_table, demo_grid, plot_attacks, plot_certified,
                     plot_corruption_families, plot_corruption_heatmap, plot_sweeps, summary_table, sweep_table,
                     unique_label)

__all__ = ['PAPER_SIGMAS', 'MNIST_SIGMAS', 'TABLE_SIGMAS', 'CIFAR10C_GAUSSIAN', 'PRESETS', 'parse_sigmas',
           'noise_sweep', 'SweepResult', 'unit_noise', 'batch_unit_noise', 'IndexedDataset', 'noisy_images',
           'certificate_comparison', 'sweep_table', 'summary_table', 'plot_sweeps', 'plot_certified', 'unique_label',
           'corruption_table', 'plot_corruption_heatmap', 'plot_corruption_families', 'attack_table', 'plot_attacks',
           'demo_grid', 'attack_sweep', 'PixelModel', 'Smooth', 'certify_dataset', 'lower_confidence_bound',
           'max_certified_radius', 'ABSTAIN', 'corruption_sweep', 'corrupt', 'CORRUPTIONS',
           'pgd_lower_bound', 'sampled_k', 'jacobian_norm']

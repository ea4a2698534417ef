"""Noise-robustness evaluation: sigma sweeps, Lipschitz estimates and bounds, certificates, reports."""
from .noise import (CIFAR10C_GAUSSIAN, PAPER_SIGMAS, TABLE_SIGMAS, IndexedDataset, SweepResult, noise_sweep,
                    parse_sigmas, unit_noise)

__all__ = ['noise_sweep', 'SweepResult', 'parse_sigmas', 'unit_noise', 'PAPER_SIGMAS', 'TABLE_SIGMAS',
           'CIFAR10C_GAUSSIAN', 'IndexedDataset']
from .report import plot_certified, plot_sweeps, summary_table, sweep_table, unique_label  # noqa: E402

__all__ += ['sweep_table', 'summary_table', 'plot_sweeps', 'plot_certified', 'unique_label']
from .certify import ABSTAIN, Smooth, certify_dataset, demo_grid, lower_confidence_bound, theorem1_radius  # noqa
from .lipschitz import (conv_operator_norm, margin_certificate, pgd_lower_bound, sampled_k,  # noqa: E402
                        spectral_upper_bound)

__all__ += ['Smooth', 'certify_dataset', 'demo_grid', 'lower_confidence_bound', 'theorem1_radius', 'ABSTAIN',
            'conv_operator_norm', 'margin_certificate', 'pgd_lower_bound', 'sampled_k', 'spectral_upper_bound']

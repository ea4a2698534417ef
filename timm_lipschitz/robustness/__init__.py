"""Noise-robustness evaluation: sigma sweeps, Lipschitz estimates and bounds, certificates, reports."""
from .noise import (CIFAR10C_GAUSSIAN, PAPER_SIGMAS, TABLE_SIGMAS, IndexedDataset, SweepResult, noise_sweep,
                    parse_sigmas, unit_noise)

__all__ = ['noise_sweep', 'SweepResult', 'parse_sigmas', 'unit_noise', 'PAPER_SIGMAS', 'TABLE_SIGMAS',
           'CIFAR10C_GAUSSIAN', 'IndexedDataset']
from .report import plot_certified, plot_sweeps, summary_table, sweep_table  # noqa: E402

__all__ += ['sweep_table', 'summary_table', 'plot_sweeps', 'plot_certified']

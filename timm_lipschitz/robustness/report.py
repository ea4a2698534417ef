"""Tables and plots of robustness results (markdown, PNG); matplotlib runs headless (Agg)."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Optional, Sequence, Union

from .noise import SweepResult
from .protocol import TABLE_SIGMAS, format_cell, index_on_grid, summary_key

__all__ = ['sweep_table', 'summary_table', 'plot_sweeps', 'plot_certified', 'save_figure', 'unique_label']


def unique_label(label: str, taken: Mapping[str, object]) -> str:
    """``label``, primed (``name'``, ``name''`` ...) until it is not in ``taken``: two models with the same run
    name both keep a column in the tables and a curve in the plot."""
    while label in taken:
        label += "'"
    return label


def _as_result(r: Union[SweepResult, Mapping]) -> SweepResult:
    if isinstance(r, SweepResult):
        return r
    fields = {k: r[k] for k in ('sigmas', 'accuracy', 'accuracy_std', 'per_repeat', 'num_images', 'repeats',
                                'seed', 'clip', 'quantize')}
    return SweepResult(**fields)


def sweep_table(results: Mapping[str, Union[SweepResult, Mapping]], sigmas: Optional[Sequence[float]] = None) -> str:
    """Markdown: one row per sigma, one column per model (mean, with +- std when there are several draws)."""
    res = {k: _as_result(v) for k, v in results.items()}
    first = next(iter(res.values()))
    grid = list(sigmas) if sigmas is not None else first.sigmas
    lines = ['| sigma_test | ' + ' | '.join(res) + ' |', '|---|' + '---|' * len(res)]
    for s in grid:
        cells = []
        for r in res.values():
            j = index_on_grid(r.sigmas, s)
            cells.append(format_cell(None if j is None else (r.accuracy[j], r.accuracy_std[j], r.repeats)))
        lines.append(f'| {s:.2f} | ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def summary_table(results: Mapping[str, Union[SweepResult, Mapping]]) -> str:
    """Markdown: the paper's columns (sigma 0 / 0.3 / 0.5) and the grid mean, one row per model."""
    head = [f'sigma {s:g}' for s in TABLE_SIGMAS] + ['grid mean']
    lines = ['| model | ' + ' | '.join(head) + ' |', '|---|' + '---|' * len(head)]
    for name, r in results.items():
        s = _as_result(r).summary()
        vals = [s.get(summary_key(x)) for x in TABLE_SIGMAS] + [s['grid_mean']]
        lines.append(f'| {name} | ' + ' | '.join('n/a' if v is None else f'{v:.2f}' for v in vals) + ' |')
    return '\n'.join(lines)


def _pyplot():
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    return plt


def save_figure(fig, ax, path: Union[str, Path], xlabel: str, ylabel: str, title: Optional[str] = None) -> Path:
    """Label, grid, legend, save as PNG and close: the common ending of every plot here."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    _pyplot().close(fig)
    return path


def plot_sweeps(results: Mapping[str, Union[SweepResult, Mapping]], path: Union[str, Path],
                title: str = 'Accuracy under Gaussian noise') -> Path:
    """Accuracy vs sigma_test, one curve per model, with a +-std band over noise draws."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    for name, r in results.items():
        r = _as_result(r)
        line, = ax.plot(r.sigmas, r.accuracy, label=name, lw=1.6)
        if r.repeats > 1:
            lo = [a - s for a, s in zip(r.accuracy, r.accuracy_std)]
            hi = [a + s for a, s in zip(r.accuracy, r.accuracy_std)]
            ax.fill_between(r.sigmas, lo, hi, color=line.get_color(), alpha=0.2)
    return save_figure(fig, ax, path, 'sigma_test (pixel std, [0,1] scale)', 'test accuracy (%)', title)


def plot_certified(curves: Mapping[str, Mapping[str, Sequence[float]]], path: Union[str, Path]) -> Path:
    """Certified accuracy vs l2 radius, one curve per model (``{'radii': [...], 'accuracy': [...]}``)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    for name, c in curves.items():
        ax.plot(c['radii'], c['accuracy'], marker='o', label=name)
    return save_figure(fig, ax, path, 'l2 radius', 'certified accuracy (%)')

"""Tables and plots of robustness results (markdown, PNG); matplotlib runs headless (Agg)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import torch
import torch.nn as nn
from matplotlib.figure import Figure

from ..certificates import eval_entry
from ..modes import eval_mode
from ..normalization import Normalizer
from ..protocol import TABLE_SIGMAS, format_cell, index_on_grid, summary_key, wilson_interval
from .attacks import NORMS
from .corruptions import CORRUPTIONS, FAMILIES, corruption_names
from .noise import SweepResult, unit_noise

__all__ = ['certificate_comparison', 'sweep_table', 'summary_table', 'plot_sweeps', 'plot_certified', 'save_figure',
           'unique_label', 'corruption_table', 'plot_corruption_heatmap', 'plot_corruption_families', 'attack_table',
           'plot_attacks', 'demo_grid', 'subplots', 'lipschitz_markdown', 'certificate_markdown']


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


def subplots(nrows: int = 1, ncols: int = 1, figsize=(6, 4), dpi: int = 110, **kwargs: Any):
    """A figure and its axes without pyplot: no backend is chosen and no global figure registry is touched (a user's
    notebook keeps its own backend); ``savefig`` renders PNG headless."""
    fig = Figure(figsize=figsize, dpi=dpi)
    return fig, fig.subplots(nrows, ncols, **kwargs)


def save_figure(fig, ax, path: Union[str, Path], xlabel: str, ylabel: str, title: Optional[str] = None,
                legend: bool = True) -> Path:
    """Label, grid, legend, save as PNG and close: the common ending of every plot here."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize=9)
    if legend:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def _with_uncertainty(ax, xs: Sequence[float], accuracy: Sequence[Optional[float]], n: int, color: str,
                      chance: Optional[float]) -> None:
    """The 95% Wilson band over the ``n`` images of each point, and the chance level as a dotted line."""
    pts = [(x, wilson_interval(a, n)) for x, a in zip(xs, accuracy) if a is not None and n]
    if pts:
        ax.fill_between([p[0] for p in pts], [p[1][0] for p in pts], [p[1][1] for p in pts], color=color, alpha=0.15,
                        lw=0)
    if chance is not None and not any(line.get_label() == 'chance' for line in ax.get_lines()):
        ax.axhline(chance, color='grey', ls=':', lw=1, label='chance')


def _images(ns: Sequence[int]) -> str:
    """``n = 10,000 images`` (or a range when the curves differ), for a title."""
    ns = sorted(set(int(n) for n in ns if n))
    return 'n = ' + (f'{ns[0]:,}' if len(ns) == 1 else f'{ns[0]:,}-{ns[-1]:,}') + ' images' if ns else ''


def plot_sweeps(results: Mapping[str, Union[SweepResult, Mapping]], path: Union[str, Path],
                title: str = 'Accuracy under Gaussian noise', chance: Optional[float] = None) -> Path:
    """Accuracy vs sigma_test, one curve per model: the 95% Wilson band over images, a +-std band over noise draws
    where there are several, and the chance level (``chance``, %)."""
    fig, ax = subplots(figsize=(6, 4), dpi=110)
    ns = []
    for name, r in results.items():
        r = _as_result(r)
        line, = ax.plot(r.sigmas, r.accuracy, label=name, lw=1.6)
        _with_uncertainty(ax, r.sigmas, r.accuracy, r.num_images, line.get_color(), chance)
        ns.append(r.num_images)
        if r.repeats > 1:
            lo = [a - s for a, s in zip(r.accuracy, r.accuracy_std)]
            hi = [a + s for a, s in zip(r.accuracy, r.accuracy_std)]
            ax.fill_between(r.sigmas, lo, hi, color=line.get_color(), alpha=0.3, hatch='//', lw=0)
    return save_figure(fig, ax, path, 'sigma_test (pixel std, [0,1] scale)', 'test accuracy (%)',
                       f'{title}\n{_images(ns)}; bands: 95% Wilson interval over images')


def plot_certified(curves: Mapping[str, Mapping[str, Sequence[float]]], path: Union[str, Path],
                   title: str = 'Certified accuracy (randomized smoothing)', chance: Optional[float] = None) -> Path:
    """Certified accuracy vs l2 radius, one curve per model (``{'radii': [...], 'accuracy': [...], 'num_images': n}``;
    None beyond smoothing's reach is left out)."""
    fig, ax = subplots(figsize=(6, 4), dpi=110)
    ns = []
    for name, c in curves.items():
        line, = ax.plot(c['radii'], [float('nan') if a is None else a for a in c['accuracy']], marker='o', label=name)
        _with_uncertainty(ax, c['radii'], c['accuracy'], c.get('num_images') or 0, line.get_color(), chance)
        ns.append(c.get('num_images') or 0)
    return save_figure(fig, ax, path, 'l2 radius', 'certified accuracy (%)',
                       f'{title}\n{_images(ns)}; bands: 95% Wilson interval over images')


# ---- common corruptions -------------------------------------------------------------------------------------------
def corruption_table(results: Mapping[str, Mapping]) -> str:
    """Markdown: one row per corruption (mean over severities), one column per model; then each family's mean, the
    mean corruption accuracy and the clean accuracy."""
    labels = list(results)
    names = [n for n in CORRUPTIONS if any(n in r for r in results.values())]
    cell = (lambda v: 'n/a' if v is None else f'{v:.2f}')
    lines = ['| corruption | family | ' + ' | '.join(labels) + ' |', '|---|---|' + '---|' * len(labels)]
    for n in names:
        lines.append(f'| {n} | {CORRUPTIONS[n][0]} | ' +
                     ' | '.join(cell(r.get(n, {}).get('mean')) for r in results.values()) + ' |')
    for f in FAMILIES:
        if any(f in r.get('by_family', {}) for r in results.values()):
            lines.append(f'| *{f} (mean)* | | ' + ' | '.join(cell(r.get('by_family', {}).get(f))
                                                            for r in results.values()) + ' |')
    lines.append('| **mean corruption accuracy** | | ' + ' | '.join(cell(r.get('mean')) for r in results.values()) + ' |')
    lines.append('| clean | | ' + ' | '.join(cell(r.get('clean')) for r in results.values()) + ' |')
    missing = sorted({m for r in results.values() for m in r.get('missing', {})})
    if missing:
        lines.append(f'\nMissing: {", ".join(missing)} (see `timm_lipschitz.robustness.corruptions.MISSING`).')
    return '\n'.join(lines)


def plot_corruption_heatmap(result: Mapping, path: Union[str, Path], title: str) -> Path:
    """Accuracy per corruption (rows) and severity (columns) of one model, with the values written in the cells."""
    names = corruption_names(result)
    sev = [str(s) for s in result['severities']]
    values = [[result[n][s] for s in sev] for n in names]
    fig, ax = subplots(figsize=(1.2 + 0.8 * len(sev), 0.9 + 0.32 * len(names)), dpi=110)
    im = ax.imshow(values, vmin=0, vmax=100, cmap='viridis', aspect='auto')
    ax.set_xticks(range(len(sev)), sev)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    for i, row in enumerate(values):
        for j, v in enumerate(row):
            ax.text(j, i, f'{v:.0f}', ha='center', va='center', fontsize=7, color='white' if v < 60 else 'black')
    fig.colorbar(im, ax=ax, label='accuracy (%)')
    return save_figure(fig, ax, path, 'severity', '', title, legend=False)


def plot_corruption_families(results: Mapping[str, Mapping], path: Union[str, Path], data: str = '') -> Path:
    """Mean accuracy per corruption family (and clean), one bar per model."""
    groups = ['clean'] + [f for f in FAMILIES if any(f in r.get('by_family', {}) for r in results.values())]
    fig, ax = subplots(figsize=(6.5, 4), dpi=110)
    width = 0.8 / max(len(results), 1)
    for k, (label, r) in enumerate(results.items()):
        ys = [r['clean'] if g == 'clean' else r['by_family'].get(g, float('nan')) for g in groups]
        ax.bar([i + k * width for i in range(len(groups))], ys, width=width, label=label)
    ax.set_xticks([i + width * (len(results) - 1) / 2 for i in range(len(groups))], groups)
    n = _images([r.get('num_images', 0) for r in results.values()])
    return save_figure(fig, ax, path, 'corruption family', 'accuracy (%)',
                       f"Common corruptions{f' on {data}' if data else ''} (CIFAR-10-C's recipes, computed on the fly)"
                       f"\n{n}")


# ---- adversarial attacks --------------------------------------------------------------------------------------------
def attack_table(results: Mapping[str, Mapping]) -> str:
    """Markdown: robust accuracy per norm and epsilon, one column per model (and its black-box and randomized-smoothing
    columns where measured); the attack named in the header, warnings of gradient masking below."""
    cols = []
    for label, r in results.items():
        cols.append((label, r['attack'], lambda r, n, e: r.get(n, {}).get(e)))
        if 'square' in r:
            cols.append((label, 'square', lambda r, n, e: r['square'].get(n, {}).get(e)))
        if 'smoothing' in r:
            cols.append((label, f"certified, smoothing σ {r['smoothing']['sigma']:g}",
                         lambda r, n, e: r['smoothing'].get(n, {}).get(e)))
    lines = ['| norm | ε | ' + ' | '.join(f'{label} ({what})' for label, what, _ in cols) + ' |',
             '|---|---|' + '---|' * len(cols)]
    clean = [results[label]['smoothing']['clean'] if what.startswith('certified') else results[label]['clean']
             for label, what, _ in cols]
    lines.append('| clean | 0 | ' + ' | '.join(f'{c:.2f}' for c in clean) + ' |')
    for norm in NORMS:
        grid = list(dict.fromkeys(e for r in results.values() for e in r.get(norm, {})))
        for e in grid:
            cells = [get(results[label], norm, e) for label, _, get in cols]
            lines.append(f'| {norm} | {e} | ' + ' | '.join('–' if c is None else f'{c:.2f}' for c in cells) + ' |')
    for label, r in results.items():
        s = r.get('smoothing')
        if s and any(v is None for v in s['l2'].values()):
            lines.append(f"\n{label} (certified): – marks radii beyond smoothing's reach, σ Φ⁻¹(α^(1/n)) = "
                         f"{s['max_radius']:.3f} with σ {s['sigma']:g}, n {s['n']}, α {s['alpha']:g}: no image can "
                         'be certified there, however robust the model.')
        lines.append(f"\n{label}: {r['method']}, {r['num_images']} images." +
                     (' Gradient-masking checks: ' + '; '.join(r['warnings']) + '.' if r['warnings'] else
                      ' Gradient-masking checks passed (accuracy falls with ε and reaches about 0 at a very large ε' +
                      ('; the black-box attack is not stronger' if 'square' in r else '') + ').'))
    return '\n'.join(lines)


def plot_attacks(results: Mapping[str, Mapping], path: Union[str, Path], norm: str, data: str = '',
                 chance: Optional[float] = None) -> Path:
    """Robust accuracy vs epsilon for one norm, one curve per model (clean accuracy at epsilon 0), with the 95% Wilson
    band over the attacked images and the chance level."""
    fig, ax = subplots(figsize=(6, 4), dpi=110)
    for label, r in results.items():
        if norm in r:
            xs = [0.0] + [float(e) for e in r[norm]]
            ys = [r['clean']] + list(r[norm].values())
            line, = ax.plot(xs, ys, marker='o', label=f"{label} ({r['attack']})")
            _with_uncertainty(ax, xs, ys, r.get('num_images', 0), line.get_color(), chance)
    method = next(iter(results.values()))['attack']
    n = _images([r.get('num_images', 0) for r in results.values()])
    return save_figure(fig, ax, path, f'ε ({norm}, [0,1] pixels)', 'robust accuracy (%)',
                       f"{method} attacks, {norm}{f' on {data}' if data else ''}\n{n}; bands: 95% Wilson interval")


@torch.no_grad()
def demo_grid(models: Dict[str, nn.Module], image: torch.Tensor, label: int, path: str | Path,
              sigmas: Sequence[float] = (0.0, 0.2, 0.4, 0.6), class_names: Optional[Sequence[str]] = None,
              seed: int = 0, mean=None, std=None) -> List[Dict[str, Any]]:
    """The paper's Table 1: one test image at increasing noise, each model's prediction and confidence in the
    true class, as an image grid (same noise draw z for every sigma and model)."""
    z = unit_noise(image.shape, seed, 0, 0)
    rows = []
    fig, axes = subplots(1 + len(models), len(sigmas), figsize=(2.2 * len(sigmas), 2.2 * (1 + len(models))),
                             dpi=100, squeeze=False)
    name = (lambda c: class_names[c] if class_names and c < len(class_names) else str(c))
    for j, s in enumerate(sigmas):
        noisy = image + s * z
        shown = noisy.clamp(0, 1).permute(1, 2, 0).squeeze(-1).numpy()
        axes[0][j].imshow(shown, cmap='gray' if image.shape[0] == 1 else None, vmin=0, vmax=1)
        axes[0][j].set_title(f'σ = {s:g}', fontsize=9)
        axes[0][j].axis('off')
        for i, (label_m, model) in enumerate(models.items(), start=1):
            with eval_mode(model):
                probs = torch.softmax(model(Normalizer(mean, std)(model, noisy.unsqueeze(0))), 1)[0]
            pred = int(probs.argmax())
            rows.append({'model': label_m, 'sigma': s, 'prediction': name(pred), 'true': name(label),
                         'confidence_true': float(probs[label])})
            ax = axes[i][j]
            ax.axis('off')
            ax.text(0.5, 0.5, f'{label_m}\npred: {name(pred)}\np(true) = {float(probs[label]):.4f}',
                    ha='center', va='center', fontsize=8, color='green' if pred == label else 'red',
                    transform=ax.transAxes)
    fig.tight_layout()
    fig.savefig(path)
    return rows


def lipschitz_markdown(lipschitz: Dict[str, Any]) -> str:
    """The Lipschitz section of ``eval.md``: sampled k(x), the PGD lower bound and the sound upper bound."""
    k_key = next(k for k in lipschitz if k.startswith('k_sigma_'))
    k, lo, upper = lipschitz[k_key], lipschitz['pgd_lower_bound']['max'], lipschitz['upper_bound']
    hi = upper['bound']
    return '\n'.join([
        '| quantity | value |', '|---|---|',
        f"| sampled k(x) at σ {k['sigma']:g}: mean / p95 / max | {k['mean']:.3f} / {k['p95']:.3f} / {k['max']:.3f} |",
        f'| PGD lower bound (max over images) | {lo:.3f} |',
        f"| upper bound ({upper['method'][:60]}...) | {'n/a' if hi is None else f'{hi:.4g}'} |"])


def _preset(smooth: Dict[str, Any]) -> str:
    """'; the cohen protocol' (and how it departs, when a setting was given beside the preset)."""
    if not smooth.get('preset'):
        return ''
    departs = smooth.get('departs_from_preset') or {}
    return f"; the {smooth['preset']} protocol" + (
        ' except ' + ', '.join(f'{k} {v:g}' for k, v in departs.items()) if departs else '')


def certificate_markdown(smooth: Dict[str, Any], margin: Optional[Dict[str, Any]] = None,
                         theorem1: Optional[Dict[str, Any]] = None) -> str:
    """The certificates section of ``eval.md``: randomized smoothing and the Lipschitz margin certificate at the
    same radii, with smoothing's reach and the conditional Theorem 1 radius spelled out."""
    radii = smooth['radii']
    lines = ['| certificate | ' + ' | '.join(f'r = {r:g}' for r in radii) + ' | mean radius |',
             '|---|' + '---|' * (len(radii) + 1),
             f"| randomized smoothing σ {smooth['sigma']:g} (n0 {smooth['n0']}, n {smooth['n']}, α "
             f"{smooth['alpha']:g}, {smooth['num_images']} images{_preset(smooth)}) | " +
             ' | '.join(f'{v:.1f}' if r <= smooth['max_radius'] else '–'
                        for r, v in zip(radii, smooth['certified_accuracy'])) +
             f" | {smooth['average_certified_radius']:.3f} |"]
    if margin is not None:
        lines.append('| deterministic (declared Lipschitz constants) | ' +
                     ' | '.join(f'{v:.1f}' for v in margin['certified_accuracy']) + f" | {margin['mean_radius']:.3g} |")
    if smooth['max_radius'] < max(radii):
        lines += ['', f"–: beyond randomized smoothing's reach with these settings: no radius above σ Φ⁻¹(α^(1/n)) "
                      f"= {smooth['max_radius']:.3f} can be certified, however robust the model (raise n or σ)."]
    if theorem1 is not None:
        lo, ln, holds = theorem1['measured_lower_bound_probs'], theorem1['lipschitz_target'], theorem1['holds']
        lines += ['', f"Theorem 1 (conditional): ρ/L_n = {theorem1['radius']:.2f} with ρ = √2/2 and L_n = {ln:g}, valid "
                      f"only if the softmax output is L_n-Lipschitz. Measured lower bound of its Lipschitz constant: "
                      f"{lo:.3f} ({'consistent with' if holds else 'exceeds'} "
                      f"L_n{'' if holds else ': the condition fails, no radius is certified'})."]
    return '\n'.join(lines)


def _at_radius(entry: Mapping, r: float) -> Dict[str, Optional[float]]:
    """One model's scores at l2 radius ``r``: deterministic and smoothing certified accuracy, PGD / AutoAttack."""
    out: Dict[str, Optional[float]] = {'deterministic': None, 'smoothing': None, 'attack': None}
    cert = eval_entry(entry)
    if cert is not None and cert.get('radius') is not None:
        radius = cert['radius']
        out['deterministic'] = 100.0 * sum(1 for v in radius if v >= max(r, 0.0)) / len(radius)
    smooth = entry.get('smoothing')
    if smooth is not None and r in smooth['radii'] and r <= smooth['max_radius']:
        out['smoothing'] = smooth['certified_accuracy'][smooth['radii'].index(r)]
    attacks = entry.get('attacks') or {}
    key = f'{r:.6g}'
    if r == 0 and 'clean' in attacks:
        out['attack'] = attacks['clean']
    elif key in attacks.get('l2', {}):
        out['attack'] = attacks['l2'][key]
    if out['smoothing'] is None and key in (attacks.get('smoothing') or {}).get('l2', {}):
        out['smoothing'] = attacks['smoothing']['l2'][key]
    return out


def certificate_comparison(results: Mapping[str, Mapping]) -> str:
    """Per model and l2 radius, side by side: deterministic certified accuracy (the Lipschitz margin with the model's
    declared constant, one forward pass), randomized-smoothing certified accuracy (n forward passes) and the robust
    accuracy an attack leaves (an upper bound of what any certificate can reach); radius 0 is clean accuracy. Each
    column names its image count. Empty when no model has a deterministic certificate."""
    labels = [k for k, v in results.items() if eval_entry(v) is not None]
    if not labels:
        return ''
    lines = ['| model | l2 radius | deterministic certified | smoothing certified | attack robust |',
             '|---|---|---|---|---|']
    for label in labels:
        e = results[label]
        attacks = e.get('attacks') or {}
        radii = sorted(set(eval_entry(e)['radii']) | {float(k) for k in attacks.get('l2', {})})
        n = (eval_entry(e)['num_images'], (e.get('smoothing') or attacks.get('smoothing') or {}).get(
            'num_images'), attacks.get('num_images'))
        for r in radii:
            v = _at_radius(e, r)
            cells = [f'{v[k]:.1f}' if v[k] is not None else '–' for k in ('deterministic', 'smoothing', 'attack')]
            lines.append(f'| {label} | {r:g} | ' + ' | '.join(cells) + ' |')
        method = attacks.get('attack', 'attack')
        lines.append(f"| {label} | images | {n[0]} | {n[1] or '–'} | {n[2] or '–'} ({method}) |")
    return '\n'.join(lines)

"""Rendering a grid's results: the paper's tables, the by-objective table, accuracy-vs-sigma plots, the
data-fraction study (the paper's Fig. 1) and the sensitivity slopes (its Section 7).

What a row is (standard training, the paper's method as published, its label) is asked of the row's objective;
cells use the evaluation protocol's lookup and mean ± std convention (:mod:`timm_lipschitz.protocol`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .._lazy import lazy_module
from ..fileio import atomic_write_text
from ..numbers import exact
from ..folders import record_outputs
from ..losses import loss_class
from ..protocol import TABLE_SIGMAS, format_cell, mean_std, summary_key, value_at
from ..recipes import get_dotted
from .points import format_value

report = lazy_module('timm_lipschitz.robustness.report', __name__)  # plots need torch and matplotlib; tables do not

__all__ = ['paper_tables', 'objective_table', 'sensitivity', 'fraction_study', 'render', 'is_standard']

Cell = Optional[Tuple[float, float, int]]


def _metric(row: Dict[str, Any], sigma: float) -> Optional[float]:
    rob = row.get('robustness')
    if rob:
        value = value_at(rob['sigmas'], rob['accuracy'], sigma)
        if value is not None:
            return value
    summary = (row.get('final') or {}).get('robustness') or {}
    return summary.get(summary_key(sigma))


def _cell(rows: List[Dict[str, Any]], sigma: float) -> Cell:
    """(mean, std, n) of the accuracy at ``sigma`` over ``rows`` (seeds), or None."""
    vals = [v for v in (_metric(r, sigma) for r in rows) if v is not None]
    return mean_std(vals) if vals else None


def _objective(row: Dict[str, Any]) -> Tuple[Any, Dict[str, Any]]:
    loss = row['recipe']['loss']
    cls = loss_class(loss['name'])
    return cls, cls.resolve_hparams(loss)


def is_standard(row: Dict[str, Any]) -> bool:
    """Only runs of an objective that is standard training (cross-entropy) make the 'standard' row: a hinge with
    beta 0 still feeds noisy images through train-mode BatchNorm, so it is a run of its own."""
    cls, hp = _objective(row)
    return cls.is_standard(hp)


def _paper_variant(row: Dict[str, Any]) -> bool:
    cls, hp = _objective(row)
    return cls.is_paper_variant(hp)


def _bold(text: str, value: Optional[float], best: Optional[float]) -> str:
    return f'**{text}**' if value is not None and best is not None and abs(value - best) < 1e-9 else text


def paper_tables(results: Dict[str, Any], group: str = 'loss.sigma', rows: str = 'loss.lipschitz_target',
                 cols: str = 'loss.beta', sigmas: Sequence[float] = TABLE_SIGMAS) -> str:
    """Markdown tables in the paper's layout: one table per ``group`` value; standard row on top; rows ``rows``,
    columns ``cols`` for each sigma_test; mean ± std over seeds; best entry per column in bold."""
    allrows = results['rows']
    standard = [r for r in allrows if is_standard(r)]
    method = [r for r in allrows if not is_standard(r) and _paper_variant(r)]
    out = []
    for g in sorted({get_dotted(r['recipe'], group) for r in method}, key=lambda v: (v is None, v)):
        sub = [r for r in method if get_dotted(r['recipe'], group) == g]
        row_vals = sorted({get_dotted(r['recipe'], rows) for r in sub})
        col_vals = sorted({get_dotted(r['recipe'], cols) for r in sub})

        grid_cells: Dict[Tuple[str, Any, Any, float], Cell] = {}
        for s in sigmas:
            std_cell = _cell(standard, s)
            for c in col_vals:
                grid_cells[('std', None, c, s)] = std_cell
                for rv in row_vals:
                    grid_cells[('m', rv, c, s)] = _cell([r for r in sub if get_dotted(r['recipe'], rows) == rv and
                                                        get_dotted(r['recipe'], cols) == c], s)
        best = {}
        for s in sigmas:
            for c in col_vals:
                vals = [v[0] for k, v in grid_cells.items() if k[2] == c and k[3] == s and v is not None]
                best[(c, s)] = max(vals) if vals else None

        def fmt(v: Cell, c: Any, s: float) -> str:
            return _bold(format_cell(v), None if v is None else v[0], best[(c, s)])
        head = [f'σ_test {s:g}, {cols.split(".")[-1]} {exact(c)}' for s in sigmas for c in col_vals]
        lines = [f'### {group.split(".")[-1]} = {g}', '',
                 f'| training | {rows.split(".")[-1]} | ' + ' | '.join(head) + ' |',
                 '|---|---|' + '---|' * len(head)]
        if standard:
            lines.append('| standard | - | ' + ' | '.join(fmt(grid_cells[('std', None, c, s)], c, s)
                                                       for s in sigmas for c in col_vals) + ' |')
        for rv in row_vals:
            lines.append(f'| proposed | {exact(rv)} | ' + ' | '.join(fmt(grid_cells[('m', rv, c, s)], c, s)
                                                             for s in sigmas for c in col_vals) + ' |')
        out.append('\n'.join(lines))
    if not method and standard:
        cells = [_cell(standard, x) for x in sigmas]
        out.append('| training | ' + ' | '.join(f'σ_test {x:g}' for x in sigmas) + ' |\n|---|' + '---|' * len(sigmas)
                   + '\n| standard | ' + ' | '.join('n/a' if c is None else f'{c[0]:.2f}' for c in cells) + ' |')
    return '\n\n'.join(out)


def _loss_label(row: Dict[str, Any]) -> str:
    if is_standard(row):
        return 'standard'
    loss = row['recipe']['loss']
    return loss_class(loss['name']).label() + ' ' + ', '.join(
        f'{k} {exact(v)}'
        for k, v in loss.items() if k != 'name')


def _flatten(prefix: str, value: Any) -> List[Tuple[str, Any]]:
    if isinstance(value, dict):
        return [kv for k, v in value.items() for kv in _flatten(f'{prefix}.{k}' if prefix else k, v)]
    return [(prefix, value)]


def _row_label(row: Dict[str, Any]) -> str:
    """The objective plus every other grid override except the seed (``model.std [1.0]``, ``steps 200``): only
    seeds are pooled, so variants of one loss (a wider net, another data fraction) keep their own rows."""
    extra = [f'{k} {exact(v)}'
             for k, v in _flatten('', row.get('axes') or {})
             if k != 'seed' and not k.startswith('loss.')]
    return ', '.join([_loss_label(row)] + extra)


def objective_table(results: Dict[str, Any], sigmas: Sequence[float] = TABLE_SIGMAS) -> str:
    """Markdown: one row per training objective and setting (seeds pooled: mean ± std), σ_test columns plus the
    grid mean; best entry per column in bold. Used for comparisons with the peers."""
    groups: Dict[str, List[Dict[str, Any]]] = {}
    for r in results['rows']:
        groups.setdefault(_row_label(r), []).append(r)
    cells = {label: [_cell(rs, s) for s in sigmas] for label, rs in groups.items()}
    means = {label: mean_std([sum(r['robustness']['accuracy']) / len(r['robustness']['accuracy'])
                              for r in rs if r.get('robustness')] or [float('nan')]) for label, rs in groups.items()}
    best = [max((c[i][0] for c in cells.values() if c[i] is not None), default=None) for i in range(len(sigmas))]
    best_mean = max((m[0] for m in means.values()), default=None)

    def fmt(c: Cell, b: Optional[float]) -> str:
        return _bold(format_cell(c), None if c is None else c[0], b)
    lines = ['| training | seeds | ' + ' | '.join(f'σ_test {s:g}' for s in sigmas) + ' | grid mean |',
             '|---|---|' + '---|' * (len(sigmas) + 1)]
    for label, rs in groups.items():
        lines.append(f'| {label} | {len(rs)} | ' + ' | '.join(fmt(c, b) for c, b in zip(cells[label], best)) +
                     f' | {fmt(means[label], best_mean)} |')
    return '\n'.join(lines)


def sensitivity(results: Dict[str, Any], nominal: Dict[str, float], deltas: Dict[str, float],
                sigma_test: float = 0.3) -> Dict[str, Optional[float]]:
    """Forward finite-difference slopes Δacc/Δh for each hyperparameter h around ``nominal`` (the paper's Section
    7: nominal (σ 0.25, β 5, L_n 0.01), Δ = (0.25, 5, 0.09)), accuracy at ``sigma_test``, mean over seeds."""
    def acc_at(values: Dict[str, float]) -> Optional[float]:
        vals = [_metric(r, sigma_test) for r in results['rows'] if not is_standard(r) and
                all(abs(float(get_dotted(r['recipe'], k, float('nan'))) - v) < 1e-9 for k, v in values.items())]
        vals = [v for v in vals if v is not None]
        return sum(vals) / len(vals) if vals else None
    base = acc_at(nominal)
    out: Dict[str, Optional[float]] = {}
    for key, d in deltas.items():
        moved = acc_at({**nominal, key: nominal[key] + d})
        out[key] = None if base is None or moved is None else (moved - base) / d
    return out


def fraction_study(results: Dict[str, Any], path: str | Path, sigmas: Sequence[float] = (0.0, 0.5)) -> Path:
    """Accuracy vs training-data fraction (the paper's Fig. 1), one curve per objective and sigma_test."""
    fig, ax = report.subplots(figsize=(6, 4), dpi=110)
    by_obj: Dict[str, Dict[float, List[Dict[str, Any]]]] = {}
    for r in results['rows']:
        label = 'standard' if is_standard(r) else loss_class(r['recipe']['loss']['name']).label()
        by_obj.setdefault(label, {}).setdefault(r['recipe']['data']['train_fraction'], []).append(r)
    for label, fr in by_obj.items():
        xs = sorted(fr)
        for s in sigmas:
            ys = [mean_std([v for v in (_metric(r, s) for r in fr[x]) if v is not None] or [float('nan')])[0]
                  for x in xs]
            ax.plot(xs, ys, marker='o', label=f'{label}, σ_test {s:g}')
    return report.save_figure(fig, ax, path, 'fraction of the training split used', 'test accuracy (%)')


def render(grid: Dict[str, Any], results: Dict[str, Any]) -> Path:
    """``tables.md`` and one accuracy-vs-sigma plot per group value in the sweep folder."""
    out = Path(grid['output_dir'])
    t = grid.get('table') or {}
    kw = {k: t[k] for k in ('group', 'rows', 'cols') if k in t}
    sig = t.get('sigmas', TABLE_SIGMAS)
    md = [f'# {grid["name"]}', '', '## By objective', '', objective_table(results, sig), '',
          '## Paper layout (Lipschitz hinge grid)', '', paper_tables(results, sigmas=sig, **kw)]
    group = kw.get('group', 'loss.sigma')
    std_rows = {f'standard ({r["point"]})': r['robustness'] for r in results['rows']
                if is_standard(r) and r['robustness']}
    groups = sorted({get_dotted(r['recipe'], group) for r in results['rows'] if not is_standard(r)},
                    key=lambda v: (v is None, v))
    for g in groups:
        curves = dict(std_rows)
        curves.update({r['point']: r['robustness'] for r in results['rows'] if not is_standard(r) and
                       get_dotted(r['recipe'], group) == g and r['robustness']})
        if curves:  # points without the key (a margin grid has no loss.sigma) share one plain plot
            key = group.split(".")[-1]
            name, title = (('curves.png', grid['name']) if g is None else
                           (f'curves_{key}{format_value(g)}.png', f'{grid["name"]}: {key} = {g}'))
            report.plot_sweeps(curves, out / name, title=title)
            md += ['', f'![{title}]({name})']
    if not groups and std_rows:
        report.plot_sweeps(std_rows, out / 'curves.png', title=grid['name'])
        md += ['', '![curves](curves.png)']
    if any(r['recipe']['data'].get('train_fraction', 1.0) < 1 for r in results['rows']):
        fraction_study(results, out / 'fraction_study.png')
        md += ['', '![fraction study](fraction_study.png)']
    sens = grid.get('sensitivity')
    if sens:
        slopes = sensitivity(results, sens['nominal'], sens['deltas'], sens.get('sigma_test', 0.3))
        md += ['', f"## Sensitivity at σ_test {sens.get('sigma_test', 0.3)}", '',
               '| hyperparameter | Δacc/Δh |', '|---|---|']
        md += [f'| {k} | {"n/a" if v is None else f"{v:.2f}"} |' for k, v in slopes.items()]
    if results.get('stale'):  # finished with another recipe than the grid's today: named, never tabulated
        md += ['', '## Stale points (not tabulated)', '',
               'Finished with another recipe than the grid asks today; `--rerun-stale` runs them again (the old runs '
               'are kept as `<point>.stale-<k>`).', '', '| point | keys that differ |', '|---|---|']
        md += [f'| {name} | {", ".join(keys)} |' for name, keys in sorted(results['stale'].items())]
    path = out / 'tables.md'
    atomic_write_text(path, '\n'.join(md) + '\n')
    record_outputs(out, ['tables.md', 'results.json', *(p.name for p in out.glob('*.png'))], 'timm-lipschitz sweep')
    return path

"""``timm-lipschitz sweep``: expand a grid of recipe overrides, run (or resume) every point, collect the results,
and render the paper's tables, the accuracy-vs-sigma plots, the data-fraction study and the sensitivity analysis.

A grid file (YAML)::

    name: cifar10_resnet20            # the sweep's folder: <output_dir>/<point name>/ per point
    base: ../paper/cifar10_base.yaml  # a recipe, relative to the grid file
    output_dir: runs/sweeps/{name}
    set: {epochs: 300}                # fixed overrides (optional)
    axes:                             # any recipe key (dotted); values may be scalars or mappings
      loss.sigma: [0.05, 0.25, 0.5]   # the product of all axes is run
      loss.beta: [1, 5, 10]
    include: [{loss: {name: cross_entropy}}]   # extra points (mappings of key: value), e.g. the baseline row
    seeds: [0, 1, 2]                  # every point is run once per seed (mean ± std in the tables)
    table: {group: loss.sigma, rows: loss.lipschitz_target, cols: loss.beta, sigmas: [0.0, 0.3, 0.5]}

Points whose run folder holds ``final.json`` are skipped, so a killed sweep resumes; an unfinished point resumes
from its last saved state.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import yaml

from .fileio import atomic_write_json, atomic_write_text, read_json
from .recipes import RecipeError, SCHEMA, get_dotted, load_recipe, resolve_recipe

__all__ = ['load_grid', 'expand_grid', 'point_name', 'run_sweep', 'collect_results', 'paper_tables',
           'objective_table', 'sensitivity', 'fraction_study', 'add_arguments', 'run_from_args', 'GridError']

GRID_KEYS = {'name', 'description', 'base', 'output_dir', 'set', 'axes', 'include', 'seeds', 'table', 'sensitivity'}


class GridError(ValueError):
    """A grid file is invalid; raised before any point runs."""


def load_grid(path: str | Path) -> Dict[str, Any]:
    path = Path(path)
    try:
        grid = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise GridError(f'cannot read grid file {path}: {e}') from e
    unknown = set(grid) - GRID_KEYS
    if unknown:
        raise GridError(f'unknown grid key(s) {sorted(unknown)} in {path}; allowed: {sorted(GRID_KEYS)}.')
    if 'base' not in grid:
        raise GridError(f'{path} has no base recipe (base: <recipe.yaml>).')
    grid['base'] = str((path.parent / grid['base']).resolve())
    grid.setdefault('name', path.stem)
    grid.setdefault('output_dir', 'runs/sweeps/{name}')
    grid['output_dir'] = grid['output_dir'].format(name=grid['name'])
    return grid


def _check_axis_key(key: str, base: Dict[str, Any]) -> None:
    """An axis key must be a recipe key; ``loss.*`` arguments depend on the loss name and are checked when each
    point's recipe is resolved."""
    parts = key.split('.')
    if parts[0] == 'loss':
        return
    node: Any = SCHEMA
    for i, p in enumerate(parts):
        if not isinstance(node, dict):
            return  # below a free-form leaf (e.g. model.kwargs.*): checked by the consumer
        if p not in node:
            where = '.'.join(parts[:i]) or 'the top level'
            raise GridError(f'unknown axis key {key!r}: {p!r} is not a recipe key at {where}; allowed: {sorted(node)}.')
        node = node[p]


ABBREV = {'sigma': 's', 'beta': 'b', 'lipschitz_target': 'l', 'alpha': 'a', 'num_noise': 'm',
          'consistency_weight': 'w', 'entropy_weight': 'e', 'train_fraction': 'frac', 'learning_rate': 'lr'}


def _fmt(v: Any) -> str:
    if isinstance(v, dict):
        return '-'.join([str(v.get('name', 'x'))] + [f'{ABBREV.get(k, k)}{_fmt(x)}' for k, x in v.items()
                                                     if k != 'name'])
    if isinstance(v, float):
        return f'{v:g}'
    return re.sub(r'[^A-Za-z0-9.]+', '', str(v))


def point_name(point: Dict[str, Any]) -> str:
    """A readable, unique folder name for a grid point, e.g. ``s0.5_b1_l0.01_seed0``."""
    parts = [_fmt(v) if isinstance(v, dict) else f'{ABBREV.get(k.split(".")[-1], k.split(".")[-1])}{_fmt(v)}'
             for k, v in point.items()]
    return '_'.join(parts) or 'base'


def expand_grid(grid: Dict[str, Any]) -> List[Dict[str, Any]]:
    """All points (product of the axes, plus ``include``), each validated as a recipe before any run."""
    base = load_recipe(grid['base'])
    axes: Dict[str, List[Any]] = grid.get('axes') or {}
    for key, values in axes.items():
        if not isinstance(values, list) or not values:
            raise GridError(f'axis {key!r} is empty or not a list; give at least one value.')
        _check_axis_key(key, base)
    points = [dict(zip(axes, combo)) for combo in itertools.product(*axes.values())] if axes else []
    for extra in grid.get('include') or []:
        for key in extra:
            _check_axis_key(key, base)
        points.append(dict(extra))
    if not points:
        points = [{}]
    seeds = grid.get('seeds')
    if seeds is not None:
        if not isinstance(seeds, list) or not seeds:
            raise GridError('seeds must be a non-empty list of integers.')
        points = [{**p, 'seed': s} for s in seeds for p in points]  # seed-major: a cut sweep has whole seeds
    seen = set()
    for p in points:
        name = point_name(p)
        if name in seen:
            raise GridError(f'two grid points have the same name {name!r}; make the axes distinct.')
        seen.add(name)
        try:
            resolve_recipe(grid['base'], _overrides(grid, p, str(Path(grid['output_dir']) / name)))
        except RecipeError as e:
            raise GridError(f'grid point {name} is not a valid recipe: {e}') from None
    return points


def _overrides(grid: Dict[str, Any], point: Dict[str, Any], out_dir: str) -> List[str]:
    ov = [f'{k}={json.dumps(v)}' for k, v in (grid.get('set') or {}).items()]
    ov += [f'{k}={json.dumps(v)}' for k, v in point.items()]
    ov.append(f'output_dir={json.dumps(str(out_dir))}')
    ov.append(f'name={json.dumps(point_name(point))}')
    return ov


def _command(grid: Dict[str, Any], point: Dict[str, Any], launcher: str = 'accelerate launch') -> str:
    out = Path(grid['output_dir']) / point_name(point)
    sets = ' '.join(f'--set {shlex.quote(o)}' for o in _overrides(grid, point, str(out)))
    return f'{launcher} -m timm_lipschitz.train --recipe {shlex.quote(grid["base"])} {sets} --resume --no-progress'


def run_sweep(grid_path: str | Path, jobs: int = 1, dry_run: bool = False, emit_commands: bool = False,
              progress: bool = False, seeds: Optional[Sequence[int]] = None,
              names: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Run every unfinished point (only those of ``seeds`` / named ``names`` if given); returns the collected
    results (also written to ``results.json``)."""
    from .train import train
    grid = load_grid(grid_path)
    points = expand_grid(grid)
    if seeds is not None:
        points = [p for p in points if p.get('seed') in set(seeds)]
    if names is not None:
        points = [p for p in points if point_name(p) in set(names)]
    out_root = Path(grid['output_dir'])
    todo = [p for p in points if not (out_root / point_name(p) / 'final.json').is_file()]
    if emit_commands:
        for p in points:
            print(_command(grid, p))
        return {'points': len(points), 'todo': len(todo)}
    print(f'sweep {grid["name"]}: {len(points)} points, {len(points) - len(todo)} finished, {len(todo)} to run')
    if dry_run:
        for p in points:
            state = 'done' if p not in todo else 'todo'
            print(f'  [{state}] {point_name(p)}')
        return {'points': len(points), 'todo': len(todo)}
    if jobs > 1:
        _run_parallel(grid, todo, jobs)
    else:
        for i, p in enumerate(todo, 1):
            print(f'[{i}/{len(todo)}] {point_name(p)}', flush=True)
            train(grid['base'], _overrides(grid, p, str(out_root / point_name(p))), resume=True,
                  progress=progress, command=_command(grid, p, 'timm-lipschitz train').replace(
                      '-m timm_lipschitz.train ', ''))
    results = collect_results(grid, points)
    render(grid, results)
    return results


def _run_parallel(grid: Dict[str, Any], todo: List[Dict[str, Any]], jobs: int) -> None:
    """N points at a time as subprocesses; one per GPU where several are visible."""
    import time

    import torch
    gpus = torch.cuda.device_count()
    queue, running, failed, started = list(todo), [], [], 0
    while queue or running:
        while queue and len(running) < jobs:
            p = queue.pop(0)
            env = dict(os.environ)
            if gpus > 1:
                env['CUDA_VISIBLE_DEVICES'] = str(started % gpus)
            started += 1
            cmd = shlex.split(_command(grid, p, shlex.quote(sys.executable)))
            running.append((subprocess.Popen(cmd, env=env), point_name(p)))
        time.sleep(0.5)
        for proc, name in list(running):
            if proc.poll() is not None:
                running.remove((proc, name))
                failed += [name] if proc.returncode else []
                print(f'{name}: {"failed" if proc.returncode else "done"}', flush=True)
    if failed:
        raise RuntimeError(f'sweep points failed: {failed}')


def collect_results(grid: Dict[str, Any], points: Optional[List[Dict[str, Any]]] = None) -> Dict[str, Any]:
    """Every finished point's summary and full sweep; written to ``<sweep>/results.json``."""
    points = points if points is not None else expand_grid(grid)
    out_root = Path(grid['output_dir'])
    rows = []
    for p in points:
        folder = out_root / point_name(p)
        if not (folder / 'final.json').is_file():
            continue
        final = read_json(folder / 'final.json')
        recipe = yaml.safe_load((folder / 'recipe.yaml').read_text())
        rob = read_json(folder / 'robustness.json')['robustness'] if (folder / 'robustness.json').is_file() else None
        rows.append({'point': point_name(p), 'axes': p, 'recipe': recipe, 'final': final, 'robustness': rob})
    results = {'grid': grid['name'], 'rows': rows}
    atomic_write_json(out_root / 'results.json', results)
    return results


# ---- tables and studies ----------------------------------------------------------------------------------------------
def _metric(row: Dict[str, Any], sigma: float) -> Optional[float]:
    rob = row.get('robustness')
    if rob:
        for s, a in zip(rob['sigmas'], rob['accuracy']):
            if abs(s - sigma) < 1e-9:
                return a
    summary = (row.get('final') or {}).get('robustness') or {}
    return summary.get(f'acc@{sigma:g}')


def _mean_std(values: List[float]) -> Tuple[float, float, int]:
    n = len(values)
    m = sum(values) / n
    sd = (sum((v - m) ** 2 for v in values) / (n - 1)) ** 0.5 if n > 1 else 0.0
    return m, sd, n


def _cell(rows: List[Dict[str, Any]], sigma: float) -> Optional[Tuple[float, float, int]]:
    """(mean, std, n) of the accuracy at ``sigma`` over ``rows`` (seeds), or None."""
    vals = [v for v in (_metric(r, sigma) for r in rows) if v is not None]
    return _mean_std(vals) if vals else None


def _is_standard(row: Dict[str, Any]) -> bool:
    loss = row['recipe']['loss']
    return loss['name'] == 'cross_entropy' or (loss['name'] == 'lipschitz_hinge' and loss.get('beta') == 0)


def paper_tables(results: Dict[str, Any], group: str = 'loss.sigma', rows: str = 'loss.lipschitz_target',
                 cols: str = 'loss.beta', sigmas: Sequence[float] = (0.0, 0.3, 0.5)) -> str:
    """Markdown tables in the paper's layout: one table per ``group`` value; standard row on top; rows ``rows``,
    columns ``cols`` for each sigma_test; mean ± std over seeds; best entry per column in bold."""
    allrows = results['rows']
    standard = [r for r in allrows if _is_standard(r)]
    method = [r for r in allrows if not _is_standard(r) and _paper_variant(r['recipe']['loss'])]
    out = []
    for g in sorted({get_dotted(r['recipe'], group) for r in method}, key=lambda v: (v is None, v)):
        sub = [r for r in method if get_dotted(r['recipe'], group) == g]
        row_vals = sorted({get_dotted(r['recipe'], rows) for r in sub})
        col_vals = sorted({get_dotted(r['recipe'], cols) for r in sub})

        grid_cells: Dict[Tuple[str, Any, Any, float], Optional[Tuple[float, float, int]]] = {}
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

        def fmt(v, c, s):
            if v is None:
                return 'n/a'
            text = f'{v[0]:.2f} ± {v[1]:.2f}' if v[2] > 1 else f'{v[0]:.2f}'
            return f'**{text}**' if best[(c, s)] is not None and abs(v[0] - best[(c, s)]) < 1e-9 else text
        head = [f'σ_test {s:g}, {cols.split(".")[-1]} {c:g}' for s in sigmas for c in col_vals]
        lines = [f'### {group.split(".")[-1]} = {g}', '',
                 f'| training | {rows.split(".")[-1]} | ' + ' | '.join(head) + ' |',
                 '|---|---|' + '---|' * len(head)]
        if standard:
            lines.append('| standard | - | ' + ' | '.join(fmt(grid_cells[('std', None, c, s)], c, s)
                                                       for s in sigmas for c in col_vals) + ' |')
        for rv in row_vals:
            lines.append(f'| proposed | {rv:g} | ' + ' | '.join(fmt(grid_cells[('m', rv, c, s)], c, s)
                                                             for s in sigmas for c in col_vals) + ' |')
        out.append('\n'.join(lines))
    if not method and standard:
        cells = [_cell(standard, x) for x in sigmas]
        out.append('| training | ' + ' | '.join(f'σ_test {x:g}' for x in sigmas) + ' |\n|---|' + '---|' * len(sigmas)
                   + '\n| standard | ' + ' | '.join('n/a' if c is None else f'{c[0]:.2f}' for c in cells) + ' |')
    return '\n\n'.join(out)


def _paper_variant(loss: Dict[str, Any]) -> bool:
    """The paper's method as published: hinge on logits, one joint forward, no clipping (other variants are
    compared in the by-objective table, not pooled into the paper's cells)."""
    return (loss['name'] == 'lipschitz_hinge' and loss.get('output', 'logits') == 'logits'
            and not loss.get('clip', False) and loss.get('joint_forward', True))


def _loss_label(row: Dict[str, Any]) -> str:
    if _is_standard(row):
        return 'standard'
    loss = row['recipe']['loss']
    return loss['name'] + ' ' + ', '.join(
        f'{k} {v:g}' if isinstance(v, (int, float)) and not isinstance(v, bool) else f'{k} {v}'
        for k, v in loss.items() if k != 'name')


def _flatten(prefix: str, value: Any) -> List[Tuple[str, Any]]:
    if isinstance(value, dict):
        return [kv for k, v in value.items() for kv in _flatten(f'{prefix}.{k}' if prefix else k, v)]
    return [(prefix, value)]


def _row_label(row: Dict[str, Any]) -> str:
    """The objective plus every other grid override except the seed (``model.std [1.0]``, ``steps 200``): only
    seeds are pooled, so variants of one loss (a wider net, another data fraction) keep their own rows."""
    extra = [f'{k} {v:g}' if isinstance(v, float) else f'{k} {v}'
             for k, v in _flatten('', row.get('axes') or {})
             if k != 'seed' and not k.startswith('loss.')]
    return ', '.join([_loss_label(row)] + extra)


def objective_table(results: Dict[str, Any], sigmas: Sequence[float] = (0.0, 0.3, 0.5)) -> str:
    """Markdown: one row per training objective and setting (seeds pooled: mean ± std), σ_test columns plus the
    grid mean; best entry per column in bold. Used for comparisons with the peers."""
    groups: Dict[str, List[Dict[str, Any]]] = {}
    for r in results['rows']:
        groups.setdefault(_row_label(r), []).append(r)
    cells = {label: [_cell(rs, s) for s in sigmas] for label, rs in groups.items()}
    means = {label: _mean_std([sum(r['robustness']['accuracy']) / len(r['robustness']['accuracy'])
                               for r in rs if r.get('robustness')] or [float('nan')]) for label, rs in groups.items()}
    best = [max((c[i][0] for c in cells.values() if c[i] is not None), default=None) for i in range(len(sigmas))]
    best_mean = max((m[0] for m in means.values()), default=None)

    def fmt(c, b):
        if c is None:
            return 'n/a'
        text = f'{c[0]:.2f} ± {c[1]:.2f}' if c[2] > 1 else f'{c[0]:.2f}'
        return f'**{text}**' if b is not None and abs(c[0] - b) < 1e-9 else text
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
        vals = [_metric(r, sigma_test) for r in results['rows'] if not _is_standard(r) and
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
    from .robustness.report import _pyplot, save_figure
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    by_obj: Dict[str, Dict[float, List[Dict[str, Any]]]] = {}
    for r in results['rows']:
        label = 'standard' if _is_standard(r) else r['recipe']['loss']['name']
        by_obj.setdefault(label, {}).setdefault(r['recipe']['data']['train_fraction'], []).append(r)
    for label, fr in by_obj.items():
        xs = sorted(fr)
        for s in sigmas:
            ys = [_mean_std([v for v in (_metric(r, s) for r in fr[x]) if v is not None] or [float('nan')])[0]
                  for x in xs]
            ax.plot(xs, ys, marker='o', label=f'{label}, σ_test {s:g}')
    return save_figure(fig, ax, path, 'fraction of the training split used', 'test accuracy (%)')


def render(grid: Dict[str, Any], results: Dict[str, Any]) -> Path:
    """``tables.md`` and one accuracy-vs-sigma plot per group value in the sweep folder."""
    from .robustness import plot_sweeps
    out = Path(grid['output_dir'])
    t = grid.get('table') or {}
    kw = {k: t[k] for k in ('group', 'rows', 'cols') if k in t}
    sig = t.get('sigmas', (0.0, 0.3, 0.5))
    md = [f'# {grid["name"]}', '', '## By objective', '', objective_table(results, sig), '',
          '## Paper layout (Lipschitz hinge grid)', '', paper_tables(results, sigmas=sig, **kw)]
    group = kw.get('group', 'loss.sigma')
    std_rows = {f'standard ({r["point"]})': r['robustness'] for r in results['rows']
                if _is_standard(r) and r['robustness']}
    groups = sorted({get_dotted(r['recipe'], group) for r in results['rows'] if not _is_standard(r)},
                    key=lambda v: (v is None, v))
    for g in groups:
        curves = dict(std_rows)
        curves.update({r['point']: r['robustness'] for r in results['rows'] if not _is_standard(r) and
                       get_dotted(r['recipe'], group) == g and r['robustness']})
        if curves:
            name = f'curves_{group.split(".")[-1]}{_fmt(g)}.png'
            plot_sweeps(curves, out / name, title=f'{grid["name"]}: {group.split(".")[-1]} = {g}')
            md += ['', f'![{group} = {g}]({name})']
    if not groups and std_rows:
        plot_sweeps(std_rows, out / 'curves.png', title=grid['name'])
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
    path = out / 'tables.md'
    atomic_write_text(path, '\n'.join(md) + '\n')
    return path


# ---- command line ----------------------------------------------------------------------------------------------------
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument('grid', help='grid YAML (see recipes/grids/)')
    p.add_argument('--dry-run', action='store_true', help='list the points and what is finished; run nothing')
    p.add_argument('--jobs', type=int, default=1, help='points at a time (subprocesses; one per GPU if several)')
    p.add_argument('--emit-commands', action='store_true', help='print one accelerate launch command per point')
    p.add_argument('--progress', action='store_true', help='progress bars for each run')
    p.add_argument('--collect', action='store_true', help='only collect finished points and render the tables')
    p.add_argument('--seeds', type=int, nargs='+', help='run only the points of these seeds')


def run_from_args(args: argparse.Namespace) -> Dict[str, Any]:
    if args.collect:
        grid = load_grid(args.grid)
        results = collect_results(grid)
        print(render(grid, results).read_text())
        return results
    results = run_sweep(args.grid, jobs=args.jobs, dry_run=args.dry_run, emit_commands=args.emit_commands,
                        progress=args.progress, seeds=args.seeds)
    if not (args.dry_run or args.emit_commands):
        grid = load_grid(args.grid)
        print((Path(grid['output_dir']) / 'tables.md').read_text())
    return results

"""Running a grid: expand a grid of recipe overrides, validate every point, run (or resume) the unfinished ones,
collect the results. The tables, plots and studies are :mod:`.tables`.

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
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import yaml

from .._lazy import lazy_module
from ..errors import UsageError, UserError
from ..fileio import atomic_write_json, atomic_write_text, read_json
from ..folders import PRODUCTS, check_output_file, check_output_folder, record_outputs
from ..numbers import check_number
from ..recipes import (DEFAULTS, SCHEMA, RecipeError, deep_merge, differing_keys, get_dotted, load_recipe,
                       read_yaml_file, resolve_recipe, under)
from ..runs import finished_summary, with_recorded_normalization
from .points import RECIPE_SHORT, point_name
from .slurm import SCRIPT_MARKER, SLURM_DEFAULTS, check_slurm, gpus_per_task, launcher, slurm_script
from .tables import render

torch = lazy_module('torch', __name__)
training = lazy_module('timm_lipschitz.train', __name__)  # a sweep that only plans, collects or writes SLURM needs no torch

__all__ = ['load_grid', 'expand_grid', 'point_name', 'run_sweep', 'collect_results', 'GridError', 'RECIPE_SHORT',
           'point_states', 'stale_keys',
           'run_from_args']

GRID_KEYS = {'name', 'description', 'base', 'output_dir', 'set', 'axes', 'include', 'seeds', 'table', 'sensitivity'}


class SweepPointsFailed(UserError, RuntimeError):
    """Some points of a sweep exited with an error; each point's run folder and output say why."""


class GridError(UsageError):
    """A grid file is invalid; raised before any point runs."""


def load_grid(path: str | Path) -> Dict[str, Any]:
    path = Path(path)
    try:
        grid = read_yaml_file(path, 'grid', GridError)
    except OSError as e:
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


def _merged(key: str, value: Any, base: Dict[str, Any]) -> List[Any]:
    """A grid value as dotted overrides: a mapping is merged into the base recipe's section key by key (``set:
    {optimizer: {lr: 0.01}}`` keeps the base's weight decay), except a mapping that names another ``name`` than the
    base's section (another loss or model), which starts that section clean."""
    section = get_dotted(base, key)
    if isinstance(value, dict) and value and isinstance(section, dict) and \
            value.get('name', section.get('name')) == section.get('name'):
        return [kv for k, v in value.items() for kv in _merged(f'{key}.{k}', v, base)]
    return [(key, value)]


def _overrides(grid: Dict[str, Any], point: Dict[str, Any], out_dir: str) -> List[str]:
    base = deep_merge(DEFAULTS, load_recipe(grid['base']))
    items = [kv for k, v in {**(grid.get('set') or {})}.items() for kv in _merged(k, v, base)]
    items += [kv for k, v in point.items() for kv in _merged(k, v, base)]
    ov = [f'{k}={json.dumps(v)}' for k, v in items]
    ov.append(f'output_dir={json.dumps(str(out_dir))}')
    ov.append(f'name={json.dumps(point_name(point))}')
    return ov


# Keys a finished point may differ in from its grid and still be current: where it ran and how it was logged.
NOT_RESULTS = ('name', 'description', 'output_dir', 'log_with', 'threads', 'log_every_steps', 'checkpoint', 'data.root',
               'data.download', 'data.num_workers', 'data.eval_batch_size', 'plugins')


def stale_keys(grid: Dict[str, Any], point: Dict[str, Any]) -> List[str]:
    """The recipe keys in which a finished point's run differs from what the grid asks of it now (empty: current).
    A grid edited after its points ran (steps 2 -> 8) leaves stale points that must not be tabulated as current."""
    folder = Path(grid['output_dir']) / point_name(point)
    saved = yaml.safe_load((folder / 'recipe.yaml').read_text()) or {}
    wanted = with_recorded_normalization(resolve_recipe(grid['base'], _overrides(grid, point, str(folder))), saved)
    return [k for k in differing_keys(saved, wanted) if not under(k, NOT_RESULTS)]


def point_states(grid: Dict[str, Any], points: List[Dict[str, Any]]) -> Dict[str, Tuple[str, List[str]]]:
    """Each point's state: ``done`` (finished with today's recipe), ``stale`` (finished with another; the keys),
    ``todo`` (not finished: it runs, or resumes)."""
    out_root = Path(grid['output_dir'])
    states: Dict[str, Tuple[str, List[str]]] = {}
    for p in points:
        if finished_summary(out_root / point_name(p)) is None:
            states[point_name(p)] = ('todo', [])
        else:
            keys = stale_keys(grid, p)
            states[point_name(p)] = ('stale', keys) if keys else ('done', [])
    return states


def _command(grid: Dict[str, Any], point: Dict[str, Any],
             launcher: str = 'accelerate launch -m timm_lipschitz.train') -> str:
    """The command that trains (or resumes) one point in its own folder."""
    out = Path(grid['output_dir']).resolve() / point_name(point)
    sets = ' '.join(f'--set {shlex.quote(o)}' for o in _overrides(grid, point, str(out)))
    return f'{launcher} --recipe {shlex.quote(grid["base"])} {sets} --resume --no-progress'


def _select(points: List[Dict[str, Any]], seeds: Optional[Sequence[int]],
            names: Optional[Sequence[str]]) -> List[Dict[str, Any]]:
    """The points a filter selects; a filter that selects nothing is an error, never an empty sweep."""
    chosen = [p for p in points if (seeds is None or p.get('seed') in set(seeds)) and
              (names is None or point_name(p) in set(names))]
    if not chosen:
        grid_seeds = sorted({p['seed'] for p in points if 'seed' in p})
        raise GridError(f'--seeds {list(seeds or [])} selects no point of this grid (its seeds: '
                        f'{grid_seeds or "none: the grid has no seeds axis"}); nothing was run or written.'
                        if seeds is not None else f'the names {list(names or [])} select no point of this grid.')
    return chosen


def _set_aside(folder: Path) -> Path:
    """Move a stale point's run out of the way (never deleted): ``<folder>.stale-<k>``."""
    k = 1
    while folder.with_name(f'{folder.name}.stale-{k}').exists():
        k += 1
    target = folder.with_name(f'{folder.name}.stale-{k}')
    folder.rename(target)
    return target


def run_sweep(grid_path: str | Path, jobs: int = 1, dry_run: bool = False, emit_commands: bool = False,
              progress: bool = False, seeds: Optional[Sequence[int]] = None,
              names: Optional[Sequence[str]] = None, slurm: Optional[Dict[str, Any]] = None,
              rerun_stale: bool = False) -> Dict[str, Any]:
    """Run every unfinished point (only those of ``seeds`` / named ``names`` if given); returns the collected
    results of every current finished point (also written to ``results.json``). A stale point (finished with
    another recipe than the grid's today) is reported, kept out of the tables, and rerun only with ``rerun_stale``
    (its old run is set aside, not deleted). ``emit_commands`` prints one command per point instead;
    ``slurm={'path': ..., <resources>}`` writes them as a SLURM job-array script (:mod:`.slurm`)."""
    grid = load_grid(grid_path)
    every = expand_grid(grid)
    points = _select(every, seeds, names)
    out_root = Path(grid['output_dir'])
    states = point_states(grid, points)
    if rerun_stale and not (dry_run or emit_commands or slurm):
        for name, (state, _) in states.items():
            if state == 'stale':
                print(f'{name}: stale, its run set aside as {_set_aside(out_root / name)}; running it again')
                states[name] = ('todo', [])
    todo = [p for p in points if states[point_name(p)][0] == 'todo']
    if slurm:
        return _write_slurm(grid, points, todo, slurm)
    if emit_commands:
        for p in points:
            print(_command(grid, p))
        return {'points': len(points), 'todo': len(todo)}
    _report_states(grid, points, states, list_all=dry_run)
    if dry_run:
        return {'points': len(points), 'todo': len(todo)}
    if jobs > 1:
        _run_parallel(grid, todo, jobs)
    else:
        for i, p in enumerate(todo, 1):
            print(f'[{i}/{len(todo)}] {point_name(p)}', flush=True)
            training.train(grid['base'], _overrides(grid, p, str(out_root / point_name(p))), resume=True,
                  progress=progress)
    results = collect_results(grid, every)
    render(grid, results)
    return results


def _report_states(grid: Dict[str, Any], points: List[Dict[str, Any]], states: Dict[str, Tuple[str, List[str]]],
                   list_all: bool) -> None:
    count = {s: sum(1 for st, _ in states.values() if st == s) for s in ('done', 'stale', 'todo')}
    print(f'sweep {grid["name"]}: {len(points)} points, {count["done"]} finished, {count["todo"]} to run'
          + (f', {count["stale"]} stale (finished with another recipe than the grid\'s: not tabulated; rerun them '
             f'with --rerun-stale)' if count['stale'] else ''))
    for p in points:
        state, keys = states[point_name(p)]
        if list_all or state == 'stale':
            print(f'  [{state}] {point_name(p)}' + (f' (differs in {", ".join(keys[:6])})' if keys else ''))


def _write_slurm(grid: Dict[str, Any], points: List[Dict[str, Any]], todo: List[Dict[str, Any]],
                 slurm: Dict[str, Any]) -> Dict[str, Any]:
    resources = dict(slurm)
    path = check_output_file(resources.pop('path'), '--slurm', SCRIPT_MARKER)
    gpus = gpus_per_task(load_recipe(grid['base']), resources.pop('gpus', None))
    text = slurm_script(grid, [_command(grid, p, launcher(gpus)) for p in points],
                        [point_name(p) for p in points], gpus, **resources)
    atomic_write_text(path, text)
    path.chmod(0o755)
    (Path(grid['output_dir']).resolve() / 'slurm').mkdir(parents=True, exist_ok=True)  # SLURM opens its logs there
    record_outputs(grid['output_dir'], ['slurm'], 'timm-lipschitz sweep --slurm')
    print(f'wrote {path}: a SLURM job array of {len(points)} points; submit it with sbatch {path}')
    return {'points': len(points), 'todo': len(todo), 'slurm': str(path)}


def _run_parallel(grid: Dict[str, Any], todo: List[Dict[str, Any]], jobs: int) -> None:
    """N points at a time as subprocesses; one per GPU where several are visible."""
    gpus = torch.cuda.device_count()
    queue, running, failed, started = list(todo), [], [], 0
    while queue or running:
        while queue and len(running) < jobs:
            p = queue.pop(0)
            env = dict(os.environ)
            if gpus > 1:
                env['CUDA_VISIBLE_DEVICES'] = str(started % gpus)
            started += 1
            cmd = shlex.split(_command(grid, p, f'{shlex.quote(sys.executable)} -m timm_lipschitz.train'))
            running.append((subprocess.Popen(cmd, env=env), point_name(p)))
        time.sleep(0.5)
        for proc, name in list(running):
            if proc.poll() is not None:
                running.remove((proc, name))
                failed += [name] if proc.returncode else []
                print(f'{name}: {"failed" if proc.returncode else "done"}', flush=True)
    if failed:
        raise SweepPointsFailed(f'sweep points failed: {failed}')


def collect_results(grid: Dict[str, Any], points: Optional[List[Dict[str, Any]]] = None) -> Dict[str, Any]:
    """Every finished, current point's summary and full sweep (all of the grid's points on disk, whichever a run
    selected); stale points are listed apart, never tabulated. Written to ``<sweep>/results.json``."""
    points = points if points is not None else expand_grid(grid)
    out_root = Path(grid['output_dir'])
    rows, stale = [], {}
    for p in points:
        folder = out_root / point_name(p)
        final = finished_summary(folder)
        if final is None:
            continue
        keys = stale_keys(grid, p)
        if keys:
            stale[point_name(p)] = keys
            continue
        recipe = yaml.safe_load((folder / 'recipe.yaml').read_text())
        rob = read_json(folder / 'robustness.json')['robustness'] if (folder / 'robustness.json').is_file() else None
        rows.append({'point': point_name(p), 'axes': p, 'recipe': recipe, 'final': final, 'robustness': rob})
    results = {'grid': grid['name'], 'rows': rows, 'stale': stale}
    atomic_write_json(out_root / 'results.json', results)
    return results




def _check_flags(args: argparse.Namespace) -> None:
    """The sweep's flags, checked before anything is written: counts in range, SLURM values in their formats, and
    the SLURM flags only with ``--slurm`` (they shape nothing else)."""
    check_number('--jobs', args.jobs, low=1, integer=True)
    given = [k for k, v in SLURM_DEFAULTS.items() if getattr(args, k) != v]
    if given and not args.slurm:
        raise UsageError(f'{", ".join("--" + k.replace("_", "-") for k in given)} '
                         f'{"shapes" if len(given) == 1 else "shape"} only the SLURM script: add '
                         f'--emit-commands --slurm FILE, or drop them.')
    if args.slurm:
        check_slurm(args.gpus_per_task, args.cpus_per_task, args.mem, args.time, args.partition, args.signal_lead,
                    args.max_requeues)


def run_from_args(args: argparse.Namespace) -> Dict[str, Any]:
    """``timm-lipschitz sweep`` (arguments: :func:`timm_lipschitz.cli.add_sweep_arguments`)."""
    _check_flags(args)
    grid = load_grid(args.grid)
    check_output_folder(grid['output_dir'], "the grid's output_dir", writes=PRODUCTS['sweep'])
    if args.collect:
        results = collect_results(grid)
        print(render(grid, results).read_text())
        return results
    slurm = None
    if args.slurm:
        slurm = {'path': args.slurm, 'gpus': args.gpus_per_task, 'cpus': args.cpus_per_task, 'mem': args.mem,
                 'time': args.time, 'partition': args.partition, 'signal_lead': args.signal_lead,
                 'max_requeues': args.max_requeues,
                 'invocation': 'timm-lipschitz sweep ' + ' '.join(shlex.quote(a) for a in args.argv).replace('\n', '\\n')}
    results = run_sweep(args.grid, jobs=args.jobs, dry_run=args.dry_run, emit_commands=args.emit_commands,
                        progress=args.progress, seeds=args.seeds, slurm=slurm, rerun_stale=args.rerun_stale)
    if not (args.dry_run or args.emit_commands or args.slurm):
        grid = load_grid(args.grid)
        print((Path(grid['output_dir']) / 'tables.md').read_text())
    return results

"""Run a grid (resumable) and publish its tables: benchmarks/results/<grid name>.{json,md} and its curve plots.

The benchmark form of ``timm-lipschitz sweep``: the same runs, plus the by-objective table (seeds pooled: mean ± std)
at the grid's ``table.sigmas`` copied next to the other results. ``--collect`` only renders what has finished.

    python benchmarks/grid_report.py recipes/grids/fmnist_resnet20_table3.yaml [--collect]
    python benchmarks/grid_report.py recipes/grids/mnist5k_standard_causes.yaml
"""
from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path
from typing import Optional

from timm_lipschitz.sweep import collect_results, load_grid, objective_table, render, run_sweep

ROOT = Path(__file__).resolve().parent.parent
from _results import OUT, write_results  # noqa: E402  (benchmarks/_results.py, beside this script)


def summarize(grid_file: Path, stem: Optional[str] = None) -> str:
    """Collect a grid's finished points, render its sweep folder, and write ``results/<stem>.{json,md}`` + PNGs;
    the table's columns are the grid's ``table.sigmas``."""
    grid = load_grid(grid_file)
    grid['output_dir'] = str(ROOT / grid['output_dir'])
    stem = stem or grid['name']
    sigmas = tuple((grid.get('table') or {}).get('sigmas', (0.0, 0.3, 0.5)))
    results = collect_results(grid)
    render(grid, results)
    table = objective_table(results, sigmas)
    OUT.mkdir(parents=True, exist_ok=True)
    rows = [{'point': r['point'], 'loss': r['recipe']['loss'], 'seed': r['recipe']['seed'],
             'clean': r['final']['clean_accuracy'], 'train_time_s': r['final'].get('train_time_s'),
             'robustness': r['robustness']} for r in results['rows']]
    write_results(stem, rows, f'# {grid["name"]}\n\n{table}\n')
    for png in Path(grid['output_dir']).glob('curves*.png'):
        shutil.copy(png, OUT / f'{stem}_{png.name}')
    return table


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('grid', type=Path)
    p.add_argument('--collect', action='store_true', help='only render the finished points')
    args = p.parse_args()
    grid_file = args.grid.resolve()
    os.chdir(ROOT)
    if not args.collect:
        run_sweep(grid_file)
    print(summarize(grid_file))


if __name__ == '__main__':
    main()

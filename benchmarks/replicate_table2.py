"""Replicate the paper's Table 2 (its MNIST net, Adam 1e-4, batch 100, 2,750 steps, beta 10) on the real data
available offline - Fashion-MNIST, mnist_5k and digits - for standard training, the three Lipschitz settings and
the peers at matched sigma_train 0.75, 3 seeds each (recipes/grids/*_table2.yaml).

Resumable: finished points are skipped (run it again after an interruption). ``--collect`` only renders what has
finished. Writes benchmarks/results/table2_<dataset>.{json,md} and the curves; prints the tables.

    python benchmarks/replicate_table2.py [--grids fmnist mnist5k digits] [--collect]
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from grid_report import summarize  # benchmarks/grid_report.py (this folder is on sys.path when run as a script)
from timm_lipschitz.sweep import expand_grid, load_grid, point_name, run_sweep

ROOT = Path(__file__).resolve().parent.parent


def grid_file(name: str) -> Path:
    return ROOT / 'recipes' / 'grids' / f'{name}_table2.yaml'


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--grids', nargs='+', default=['fmnist', 'mnist5k', 'digits'])
    p.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
    p.add_argument('--collect', action='store_true')
    args = p.parse_args()
    os.chdir(ROOT)
    if not args.collect:
        # the headline objectives (standard, Lipschitz s0.75/L0.005, Gaussian) for every seed and dataset first,
        # then the other Lipschitz settings and the peers: an interrupted run still has mean +- std where it counts
        grids = {grid_file(n): expand_grid(load_grid(grid_file(n))) for n in args.grids}
        for group in ([0, 2, 4], [1, 3, 5, 6]):
            for seed in args.seeds:
                for i in group:
                    for f, all_points in grids.items():
                        points = [p for p in all_points if p.get('seed') == seed]
                        if i < len(points):
                            run_sweep(f, names=[point_name(points[i])])
    for name in args.grids:
        print(f'\n## {name}\n\n{summarize(grid_file(name), f"table2_{name}")}')


if __name__ == '__main__':
    main()

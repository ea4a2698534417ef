"""Merge the ``eval.json`` files of separate ``timm-lipschitz eval`` runs into one table and one overlaid plot, for
models evaluated one at a time (on different machines, say) on the same data and noise grid.

    python benchmarks/merge_evals.py NAME EVAL_JSON [EVAL_JSON ...]

Writes benchmarks/results/NAME.{json,md,png} and prints the markdown.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from timm_lipschitz.evaluate import read_eval  # noqa: E402
from timm_lipschitz.robustness import plot_sweeps, summary_table, sweep_table, unique_label  # noqa: E402

from _results import OUT, write_results  # noqa: E402  (benchmarks/_results.py, beside this script)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('name')
    p.add_argument('evals', nargs='+', type=Path)
    args = p.parse_args()
    entries = {}
    for path in args.evals:
        for label, entry in read_eval(path).items():  # either eval.json layout (format_version 2 or before)
            if not isinstance(entry, dict) or not {'sweep', 'data'} <= set(entry):
                raise SystemExit(f'{path} is not an eval.json of timm-lipschitz eval (entry {label!r} has no sweep).')
            entries[unique_label(label, entries)] = entry  # the same run name from two files: keep both
    grids = {tuple(e['sweep']['sigmas']) for e in entries.values()}
    if len(grids) != 1 or len({(e['data'], e['sweep']['num_images']) for e in entries.values()}) != 1:
        raise SystemExit(f'the evaluations differ in data or noise grid; nothing merged: {sorted(entries)}')
    sweeps = {label: e['sweep'] for label, e in entries.items()}
    md = '\n'.join([summary_table(sweeps), '', sweep_table(sweeps), ''])
    write_results(args.name, entries, md)
    plot_sweeps(sweeps, OUT / f'{args.name}.png')
    print(md)


if __name__ == '__main__':
    main()

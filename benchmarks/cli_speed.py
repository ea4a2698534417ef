"""How fast the command line answers before any work: ``timm-lipschitz --help`` and a mistaken recipe (a bad type,
and a value the objective's own check refuses), each timed as a whole process (target: under 1 s on 2 CPU cores;
torch and timm alone take about 5 s to import).

    python benchmarks/cli_speed.py [--repeats 7]

Writes benchmarks/results/cli_speed.json and .md and prints the table (min / median / max over the repeats).
"""
from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
from _results import write_results  # noqa: E402  (benchmarks/_results.py, beside this script)
TARGET_S = 1.0


def _time(cmd, repeats: int):
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        times.append(time.perf_counter() - t)
    return times, r


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--repeats', type=int, default=7)
    args = p.parse_args()
    exe = [sys.executable, '-m', 'timm_lipschitz.cli']
    tmp = Path(tempfile.mkdtemp())
    (tmp / 'bad_type.yaml').write_text('epochs: ten\n')
    (tmp / 'bad_value.yaml').write_text('epochs: 1\nloss: {name: lipschitz_hinge, sigma: -0.5}\n')
    cases = {'--help': exe + ['--help'],
             'recipe with a wrong type': exe + ['train', '--recipe', str(tmp / 'bad_type.yaml')],
             'recipe with loss.sigma=-0.5': exe + ['train', '--recipe', str(tmp / 'bad_value.yaml')],
             'python -c "import torch, timm" (reference)': [sys.executable, '-c', 'import torch, timm']}
    rows = []
    for name, cmd in cases.items():
        times, r = _time(cmd, args.repeats)
        rows.append({'case': name, 'min_s': min(times), 'median_s': statistics.median(times), 'max_s': max(times),
                     'exit_code': r.returncode, 'stderr': r.stderr.strip().splitlines()[-1:] if r.stderr else []})
    result = {'command': 'python benchmarks/cli_speed.py --repeats %d' % args.repeats, 'target_s': TARGET_S,
              'machine': f'{platform.processor() or platform.machine()}, {platform.python_version()}',
              'date': time.strftime('%Y-%m-%d'), 'rows': rows,
              'met': all(r['median_s'] < TARGET_S for r in rows if 'reference' not in r['case'])}
    md = ['| case | min s | median s | max s | exit code |', '|---|---|---|---|---|']
    md += [f"| {r['case']} | {r['min_s']:.3f} | {r['median_s']:.3f} | {r['max_s']:.3f} | {r['exit_code']} |"
           for r in rows]
    md.append(f"\nTarget: every command line case under {TARGET_S:g} s (median): {'met' if result['met'] else 'MISSED'}.")
    write_results('cli_speed', result, '\n'.join(md) + '\n')
    print('\n'.join(md))


if __name__ == '__main__':
    main()

"""How long a whole documented command takes, as a user runs it (a fresh process: imports, weights, data, work), against
a target, with the lines its output must hold checked too (a fast run that printed the wrong thing meets nothing).

    python benchmarks/command_time.py NAME --target-s 300 --expect "deterministic certified" \
        -- timm-lipschitz eval --model lip_convnet.lipschitz_margin_e075_tau8_fmnist --pretrained --certify \
           --max-images 200

Runs the command ``--repeats`` times in a scratch folder (its outputs are left there) and writes NAME.json and NAME.md
(benchmarks/out/, or benchmarks/results/ under UPDATE_RESULTS=1): min / median / max wall seconds, the exit code,
whether every ``--expect`` text was printed, and whether the median met the target.
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

import torch

from _results import write_results  # noqa: E402  (benchmarks/_results.py, beside this script)


def time_command(cmd: List[str], repeats: int, expect: List[str]) -> Dict[str, Any]:
    """Wall seconds of each run and whether each printed every expected text."""
    times, printed, code = [], True, 0
    first = Path(cmd[0])  # found from here, though it runs in a scratch folder
    cmd = [str(first.resolve()) if first.exists() else shutil.which(cmd[0]) or cmd[0]] + cmd[1:]
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as scratch:
            t = time.perf_counter()
            r = subprocess.run(cmd, capture_output=True, text=True, cwd=scratch)
            times.append(time.perf_counter() - t)
        code = code or r.returncode
        printed = printed and all(e in r.stdout for e in expect)
    return {'times_s': times, 'min_s': min(times), 'median_s': statistics.median(times), 'max_s': max(times),
            'exit_code': code, 'printed_expected': printed}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('name')
    p.add_argument('--target-s', type=float, required=True)
    p.add_argument('--expect', action='append', default=[], help='a text the output must hold (repeatable)')
    p.add_argument('--repeats', type=int, default=1)
    p.add_argument('--note', default='', help='what else ran on the machine meanwhile')
    argv = sys.argv[1:]
    if '--' not in argv or argv.index('--') == len(argv) - 1:
        p.error('give the command after --')
    args = p.parse_args(argv[:argv.index('--')])
    cmd = argv[argv.index('--') + 1:]
    r = time_command(cmd, args.repeats, args.expect)
    met = r['exit_code'] == 0 and r['printed_expected'] and r['median_s'] <= args.target_s
    result = {'command': ' '.join(cmd), 'target_s': args.target_s, 'expect': args.expect, **r, 'met': met,
              'machine': f'{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, '
                         f'torch {torch.__version__}',
              'note': args.note, 'date': time.strftime('%Y-%m-%d')}
    md = [f"`{result['command']}`", '', '| runs | min s | median s | max s | exit code | printed the expected lines |',
          '|---|---|---|---|---|---|',
          f"| {args.repeats} | {r['min_s']:.1f} | {r['median_s']:.1f} | {r['max_s']:.1f} | {r['exit_code']} | "
          f"{'yes' if r['printed_expected'] else 'NO'} |", '',
          f"Target: under {args.target_s:g} s (median): {'met' if met else 'MISSED'}. Machine: {result['machine']}; "
          f"{result['date']}.{' ' + args.note if args.note else ''}"]
    write_results(args.name, result, '\n'.join(md) + '\n')
    print('\n'.join(md))


if __name__ == '__main__':
    main()

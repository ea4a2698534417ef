"""Where every benchmark leaves its numbers: ``NAME.json`` (the data, read back by the tests and by RESULTS.md's
sections) beside ``NAME.md`` (the table a reader opens).

A re-run writes into ``benchmarks/out/`` (untracked), so repeating a documented command never rewrites the tracked
``benchmarks/results/`` that RESULTS.md quotes and ``tests/test_results_md.py`` checks. ``UPDATE_RESULTS=1`` writes
into ``benchmarks/results/`` instead: how a maintainer replaces published numbers (and then updates RESULTS.md).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Optional

HERE = Path(__file__).resolve().parent
TRACKED = HERE / 'results'
SCRATCH = HERE / 'out'


def results_dir() -> Path:
    """``benchmarks/results`` under ``UPDATE_RESULTS=1``, else ``benchmarks/out``."""
    return TRACKED if os.environ.get('UPDATE_RESULTS') == '1' else SCRATCH


OUT = results_dir()


def write_results(name: str, data: Any, markdown: str, default: Optional[Callable[[Any], Any]] = None) -> None:
    """``OUT/name.json`` (indented; ``default`` as in :func:`json.dumps`) and ``OUT/name.md`` (``markdown`` as is)."""
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f'{name}.json').write_text(json.dumps(data, indent=1, default=default))
    (OUT / f'{name}.md').write_text(markdown)
    if OUT == SCRATCH:
        print(f'(written to {OUT / name}.{{json,md}}; UPDATE_RESULTS=1 writes the tracked benchmarks/results/)')


def read_results(name: str) -> Any:
    """``name.json`` from this run's folder, else the tracked one (what ``--render`` re-renders)."""
    for folder in (OUT, TRACKED):
        if (folder / f'{name}.json').is_file():
            return json.loads((folder / f'{name}.json').read_text())
    raise FileNotFoundError(f'{name}.json is in neither {OUT} nor {TRACKED}')

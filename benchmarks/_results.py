"""Where every benchmark leaves its numbers: ``benchmarks/results/NAME.json`` (the data, read back by the tests and
by RESULTS.md's sections) beside ``NAME.md`` (the table a reader opens)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Optional

OUT = Path(__file__).resolve().parent / 'results'


def write_results(name: str, data: Any, markdown: str, default: Optional[Callable[[Any], Any]] = None) -> None:
    """``OUT/name.json`` (indented; ``default`` as in :func:`json.dumps`) and ``OUT/name.md`` (``markdown`` as is)."""
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f'{name}.json').write_text(json.dumps(data, indent=1, default=default))
    (OUT / f'{name}.md').write_text(markdown)

"""``timm-lipschitz hub list``: every shipped tag with its dataset, objective and headline scores, from the tag index
and the files' metadata (:mod:`.zoo`), without loading torch."""
from __future__ import annotations

import json
from typing import Any, Dict, List

from .certificates import read_summary
from .protocol import SUMMARY_KEYS, summary_label
from .zoo import WEIGHTS_DIR, header_metadata, shipped

__all__ = ['tag_rows', 'tag_table', 'LIST_COLUMNS', 'DETERMINISTIC_RADII']

DETERMINISTIC_RADII = ('0.25', '0.5', '1')  # l2 radii of the recorded deterministic certificate in `hub list`
DETERMINISTIC = tuple(f'deterministic certified l2 {r}' for r in DETERMINISTIC_RADII)
SMOOTHING = 'smoothing certified l2 0.5'  # randomized smoothing's, where an evaluation recorded it
LIST_COLUMNS = (*SUMMARY_KEYS, 'corruption_mean', SMOOTHING, *DETERMINISTIC)  # the headline scores of `hub list`


def tag_rows() -> List[Dict[str, Any]]:
    """Every shipped tag with its dataset, objective and headline scores (None where it has none)."""
    rows = []
    for name, entry in sorted(shipped().items()):
        meta = header_metadata(WEIGHTS_DIR / entry['file'])
        scores = json.loads(meta.get('robustness') or '{}')
        cert = (read_summary(scores) or {}).get('certified') or {}
        rows.append({'name': name, 'dataset': meta.get('dataset'), 'objective': meta.get('objective'),
                     **{k: scores.get(k) for k in LIST_COLUMNS},
                     SMOOTHING: ((scores.get('smoothing') or {}).get('certified') or {}).get('0.5'),
                     **{column: cert.get(r) for column, r in zip(DETERMINISTIC, DETERMINISTIC_RADII)}})
    return rows


def _cell(value: Any) -> str:
    if value is None:
        return '-'
    return f'{value:.2f}' if isinstance(value, (int, float)) else str(value)


def tag_table(rows: List[Dict[str, Any]]) -> str:
    """The rows as a markdown table (what ``timm-lipschitz hub list`` prints)."""
    heads = ['tag', 'dataset', 'objective', *(summary_label(k) if k in SUMMARY_KEYS else k.replace('_', ' ')
                                              for k in LIST_COLUMNS)]
    lines = ['| ' + ' | '.join(heads) + ' |', '|---' * len(heads) + '|']
    lines += ['| ' + ' | '.join([r['name'], _cell(r['dataset']), _cell(r['objective']),
                                 *(_cell(r[k]) for k in LIST_COLUMNS)]) + ' |' for r in rows]
    return '\n'.join(lines)

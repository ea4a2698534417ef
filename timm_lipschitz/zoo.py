"""The shipped tags, without loading torch: ``weights/index.json`` (which tag lives in which safetensors file, and
the cfg fields that differ from the architecture's default) and each file's own metadata, read from the safetensors
header (its first 8 bytes give the length of a JSON header holding ``__metadata__``). ``timm-lipschitz hub list``
answers from here in well under a second; the models register the same tags with timm (``models/_pretrained``)."""
from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any, Dict, List

from .robustness.protocol import SUMMARY_KEYS, summary_label

__all__ = ['WEIGHTS_DIR', 'INDEX', 'shipped', 'header_metadata', 'tag_rows', 'tag_table', 'LIST_COLUMNS']

WEIGHTS_DIR = Path(__file__).resolve().parent / 'weights'
INDEX = WEIGHTS_DIR / 'index.json'
LIST_COLUMNS = (*SUMMARY_KEYS, 'corruption_mean', 'certified')  # the headline scores of `hub list`


def shipped() -> Dict[str, Dict[str, Any]]:
    """name -> {'file': <file name under WEIGHTS_DIR>, 'cfg': {...}} for the weights that ship in the package."""
    return json.loads(INDEX.read_text()) if INDEX.is_file() else {}


def header_metadata(path: Path) -> Dict[str, str]:
    """A safetensors file's string metadata, read from its header alone (no tensor is read, torch is not loaded)."""
    with open(path, 'rb') as f:
        (length,) = struct.unpack('<Q', f.read(8))
        return json.loads(f.read(length)).get('__metadata__', {})


def tag_rows() -> List[Dict[str, Any]]:
    """Every shipped tag with its dataset, objective and headline scores (None where it has none)."""
    rows = []
    for name, entry in sorted(shipped().items()):
        meta = header_metadata(WEIGHTS_DIR / entry['file'])
        scores = json.loads(meta.get('robustness') or '{}')
        rows.append({'name': name, 'dataset': meta.get('dataset'), 'objective': meta.get('objective'),
                     **{k: scores.get(k) for k in LIST_COLUMNS}})
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

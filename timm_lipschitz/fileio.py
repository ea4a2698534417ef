"""Atomic file writes: a killed process leaves either the old file or the new one, never half of one."""
from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Dict, Tuple, Union

from .errors import UsageError

__all__ = ['atomic_write_bytes', 'atomic_write_text', 'atomic_write_json', 'read_json', 'dumps', 'finite_json',
           'NON_FINITE_KEY']


def atomic_write_bytes(path: Union[str, Path], data: bytes) -> Path:
    """Write to a temporary file in the same folder, fsync, then ``os.replace`` onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f'.{path.name}.', suffix='.tmp')
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; give the usual permissions
    try:
        with os.fdopen(fd, 'wb') as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: Union[str, Path], text: str) -> Path:
    return atomic_write_bytes(path, text.encode('utf-8'))


NON_FINITE_KEY = 'non_finite_values'  # where a written mapping says which values were NaN or infinite


def finite_json(obj: Any, path: str = '') -> Tuple[Any, Dict[str, str]]:
    """``obj`` with every NaN or infinite float replaced by None (JSON has no such numbers: most readers refuse
    ``NaN``), and the dotted path of each replaced value with the reason."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None, {path or '.': f'{obj} is not a finite number; written as null'}
    notes: Dict[str, str] = {}
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            out[k], sub = finite_json(v, f'{path}.{k}' if path else str(k))
            notes.update(sub)
        return out, notes
    if isinstance(obj, (list, tuple)):
        out_list = []
        for i, v in enumerate(obj):
            value, sub = finite_json(v, f'{path}[{i}]')
            out_list.append(value)
            notes.update(sub)
        return out_list, notes
    return obj, notes


def dumps(obj: Any, **kwargs: Any) -> str:
    """``json.dumps`` that never writes NaN or Infinity: non-finite floats become null, and a mapping records them
    under :data:`NON_FINITE_KEY` (the dotted path and why)."""
    default = kwargs.pop('default', _jsonable)
    clean, notes = finite_json(json.loads(json.dumps(obj, default=default)))
    if notes and isinstance(clean, dict):
        clean = {**clean, NON_FINITE_KEY: {**clean.get(NON_FINITE_KEY, {}), **notes}}
    return json.dumps(clean, allow_nan=False, **kwargs)


def atomic_write_json(path: Union[str, Path], obj: Any) -> Path:
    """JSON with two-space indents, written atomically; NaN and infinities become null with a note (:func:`dumps`)."""
    return atomic_write_text(path, dumps(obj, indent=2, sort_keys=False) + '\n')


def _jsonable(o: Any) -> Any:
    if isinstance(o, (tuple, set)):
        return list(o)
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, 'item'):
        return o.item()
    raise TypeError(f'{type(o).__name__} is not JSON serializable')


def read_json(path: Union[str, Path]) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UsageError(f'{path} is not valid JSON: {e}') from e

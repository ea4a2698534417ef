"""Reader for the idx format of MNIST and Fashion-MNIST (plain or gzip), with errors that name the file."""
from __future__ import annotations

import gzip
from pathlib import Path
from typing import Union

import numpy as np

from ..errors import UsageError

__all__ = ['read_idx', 'write_idx']

# idx type byte -> numpy big-endian dtype
_DTYPES = {0x08: np.dtype('>u1'), 0x09: np.dtype('>i1'), 0x0B: np.dtype('>i2'), 0x0C: np.dtype('>i4'),
           0x0D: np.dtype('>f4'), 0x0E: np.dtype('>f8')}


def _open(path: Path):
    return gzip.open(path, 'rb') if path.suffix == '.gz' else open(path, 'rb')


def read_idx(path: Union[str, Path]) -> np.ndarray:
    """The array stored in an idx file; ``ValueError`` naming the file if it is corrupt or truncated."""
    path = Path(path)
    try:
        with _open(path) as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise UsageError(f'cannot read idx file {path}: {e}') from e
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _DTYPES:
        raise UsageError(f'{path} is not an idx file (bad magic number {raw[:4].hex() or "<empty>"}).')
    dtype, ndim = _DTYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise UsageError(f'{path} is truncated: its header needs {header} bytes, the file has {len(raw)}.')
    shape = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], 'big') for i in range(ndim))
    expected = header + int(np.prod(shape)) * dtype.itemsize
    if len(raw) != expected:
        raise UsageError(f'{path} is truncated or corrupt: shape {shape} needs {expected} bytes, '
                         f'the file has {len(raw)}.')
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder('='))


def write_idx(path: Union[str, Path], array: np.ndarray) -> None:
    """Write ``array`` as an idx file (gzip if the name ends in .gz); used by tests and converters."""
    path = Path(path)
    code = {np.dtype(v).newbyteorder('='): k for k, v in _DTYPES.items()}[np.dtype(array.dtype)]
    header = bytes([0, 0, code, array.ndim]) + b''.join(int(s).to_bytes(4, 'big') for s in array.shape)
    data = header + np.ascontiguousarray(array).astype(_DTYPES[code]).tobytes()
    with (gzip.open(path, 'wb') if path.suffix == '.gz' else open(path, 'wb')) as f:
        f.write(data)

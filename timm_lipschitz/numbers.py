"""The one number checker: every number of a recipe, a grid, ``--set`` and every command-line flag is checked here, so
a refusal always says the same thing: the key or flag, the value, and the allowed range. Torch-free.

- :func:`check_number` - finite (NaN and infinity are refused where a finite number is meant), an integer where one
  is meant, inside a stated range;
- :class:`NumberLoader` / :func:`load_yaml` - YAML whose ``1e-3``, ``5E-4`` and ``1e+0`` are numbers (YAML 1.1 reads
  an exponent without a dot as text, though every paper writes learning rates that way).
"""
from __future__ import annotations

import math
import re
from typing import Any, Optional, Type

import yaml

from .errors import UsageError

__all__ = ['exact', 'check_number', 'check_count', 'NumberLoader', 'load_yaml', 'is_number', 'range_text',
           'NUMBER_PATTERN']


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def exact(value: Any) -> str:
    """A value as a label writes it: a number exactly as given (the shortest text that reads back to it:
    ``0.5000001`` stays ``0.5000001``, ``0.5`` is ``0.5``, ``1e-05`` stays ``1e-05``), anything else as is."""
    if isinstance(value, float) and math.isfinite(value) and value.is_integer() and abs(value) < 1e16:
        return str(int(value))  # 1.0 reads as 1, as the tables always wrote it
    return repr(value) if isinstance(value, float) else str(value)


def range_text(low: Optional[float], high: Optional[float], low_open: bool, high_open: bool, integer: bool) -> str:
    """How a range reads in an error: 'an integer >= 1', 'a number in (0, 1)', 'a finite number > 0'."""
    kind = 'an integer' if integer else 'a finite number'
    if low is not None and high is not None:
        return f'{kind} in {"(" if low_open else "["}{low:g}, {high:g}{")" if high_open else "]"}'
    if low is not None:
        return f'{kind} {">" if low_open else ">="} {low:g}'
    if high is not None:
        return f'{kind} {"<" if high_open else "<="} {high:g}'
    return kind


def check_number(name: str, value: Any, *, low: Optional[float] = None, high: Optional[float] = None,
                 low_open: bool = False, high_open: bool = False, integer: bool = False, allow_none: bool = False,
                 error: Type[Exception] = UsageError, hint: str = '') -> Any:
    """``value`` if it is a finite number (an integer with ``integer``) in the range; else ``error`` naming ``name``
    (the recipe key or the flag) and what is allowed. ``None`` passes with ``allow_none``."""
    if value is None and allow_none:
        return None
    ok = is_number(value) and (not integer or isinstance(value, int)) and math.isfinite(value)
    if ok:
        ok = not ((low is not None and (value < low or (low_open and value == low))) or
                  (high is not None and (value > high or (high_open and value == high))))
    if not ok:
        raise error(f'{name}={value!r} is not allowed; give {range_text(low, high, low_open, high_open, integer)}'
                    f'{"" if not hint else " (" + hint + ")"}.')
    return value


def check_count(name: str, value: Any, low: int = 1, error: Type[Exception] = UsageError) -> int:
    """An integer >= ``low`` (a count, a size, an index of steps)."""
    return check_number(name, value, low=low, integer=True, error=error)


NUMBER_PATTERN = re.compile(r'''^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                                |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                                |\.[0-9_]+(?:[eE][-+][0-9]+)?
                                |[-+]?\.(?:inf|Inf|INF)
                                |\.(?:nan|NaN|NAN))$''', re.X)


class NumberLoader(yaml.SafeLoader):
    """YAML's safe loader, reading ``1e-3`` (an exponent without a dot) as the number it is written as."""


NumberLoader.yaml_implicit_resolvers = {k: list(v) for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
for _first in list('-+0123456789.'):
    NumberLoader.yaml_implicit_resolvers[_first] = [
        (tag, regexp) for tag, regexp in NumberLoader.yaml_implicit_resolvers.get(_first, [])
        if tag != 'tag:yaml.org,2002:float']
NumberLoader.add_implicit_resolver('tag:yaml.org,2002:float', NUMBER_PATTERN, list('-+0123456789.'))


def load_yaml(text: str, loader: Type[yaml.SafeLoader] = NumberLoader) -> Any:
    """YAML text as data, with :class:`NumberLoader`'s numbers (``--set`` values, grids, recipes)."""
    return yaml.load(text, Loader=loader)

"""Deferred imports of heavy modules (torch and timm take seconds to import: benchmarks/RESULTS.md, "Command-line
answer time", has the measured figures).

The command line reads recipes and the objectives' declared arguments without them, so ``--help`` and a recipe
mistake are answered in well under a second. A module that needs torch only at call time writes
``torch = lazy_module('torch', __name__)``: the stand-in imports torch on first attribute access and then replaces
itself in that module's globals with the real module, so later code sees plain torch. Code about to trace those
modules with ``torch.compile`` calls :func:`load_all` first: a first access inside a compiled region would run an
import there, which dynamo cannot trace (a graph break that can end the compilation with an error).
"""
from __future__ import annotations

import importlib
import sys
from typing import Any, List

__all__ = ['lazy_module', 'load_all']


class _Deferred:
    def __init__(self, name: str, owner: str) -> None:
        object.__setattr__(self, '_name', name)
        object.__setattr__(self, '_owner', owner)

    def _load(self) -> Any:
        module = importlib.import_module(self._name)
        owner = sys.modules.get(self._owner)
        if owner is not None:
            for key, value in list(vars(owner).items()):
                if value is self:
                    setattr(owner, key, module)
        return module

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._load(), attr)

    def __repr__(self) -> str:
        return f'<deferred import of {self._name!r} in {self._owner}>'


_PENDING: List[_Deferred] = []  # every stand-in made, so load_all can replace the ones still in place


def lazy_module(name: str, owner: str) -> Any:
    """A stand-in for module ``name`` in the globals of module ``owner`` (pass ``__name__``)."""
    if name in sys.modules:
        return sys.modules[name]
    stand_in = _Deferred(name, owner)
    _PENDING.append(stand_in)
    return stand_in


def load_all() -> None:
    """Import every deferred module now and put the real modules in place of their stand-ins."""
    while _PENDING:
        _PENDING.pop()._load()

"""A loss registry in timm's style (timm has one for models, none for losses)."""
from __future__ import annotations

import inspect
from typing import Any, Callable, Dict, List, Type, TypeVar

from ..errors import UsageError

__all__ = ['register_loss', 'create_loss', 'list_losses', 'loss_class', 'loss_arguments']

_LOSSES: Dict[str, type] = {}
T = TypeVar('T', bound=type)


def _check_abbrev(name: str, cls: type) -> None:
    """Short names must be known hyperparameters, free of '_' (the tag separator) and prefix-free, so a tag parses
    back unambiguously."""
    params = cls.defaults()
    for key in [*cls.abbrev, *cls.tag_always]:
        if key not in params:
            raise UsageError(f'loss {name!r}: {key!r} in abbrev/tag_always is not an argument of {cls.__qualname__}.')
    short = cls.short_names()
    values = list(short.values())
    for a in values:
        if not a.isalnum() or not a[0].isalpha() or any(b != a and b.startswith(a) for b in values) \
                or values.count(a) > 1:
            raise UsageError(f'loss {name!r}: short names {short} must be alphanumeric, start with a letter, be '
                             f'distinct and none a prefix of another.')


def register_loss(name: str) -> Callable[[T], T]:
    """Class decorator: make ``create_loss(name, **kwargs)`` build this objective."""
    def wrap(cls: T) -> T:
        if name in _LOSSES and _LOSSES[name] is not cls:
            raise UsageError(f'loss {name!r} is already registered by {_LOSSES[name].__qualname__}.')
        cls.loss_name = name
        _check_abbrev(name, cls)
        _LOSSES[name] = cls
        return cls
    return wrap


def list_losses() -> List[str]:
    """Registered loss names, sorted."""
    return sorted(_LOSSES)


def loss_class(name: str) -> Type[Any]:
    if name not in _LOSSES:
        raise UsageError(f'unknown loss {name!r}; registered losses: {", ".join(list_losses())}.')
    return _LOSSES[name]


def loss_arguments(name: str) -> Dict[str, Any]:
    """Keyword arguments the loss accepts, with their defaults (``inspect.Parameter.empty`` if required)."""
    sig = inspect.signature(loss_class(name).__init__)
    return {p.name: p.default for p in sig.parameters.values()
            if p.name != 'self' and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}


def create_loss(name: str, **kwargs: Any) -> Any:
    """Build the registered objective ``name``; unknown names or keyword arguments list what is allowed."""
    allowed = loss_arguments(name)
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise UsageError(f'unknown argument(s) {unknown} for loss {name!r}; allowed: {sorted(allowed)}.')
    return loss_class(name)(**kwargs)

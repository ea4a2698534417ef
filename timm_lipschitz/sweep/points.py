"""Names of grid points: readable, unique folder names such as ``s0.5_b1_l0.01_seed0``, built from the objectives'
own short names (``loss.sigma`` -> ``s``) and a few of the recipe's (:data:`RECIPE_SHORT`)."""
from __future__ import annotations

from typing import Any, Dict, Optional

from ..losses import list_losses, loss_class
from ..naming import POINT_CHARS, safe_name

__all__ = ['point_name', 'RECIPE_SHORT', 'format_value']

RECIPE_SHORT = {'train_fraction': 'frac'}   # short names of recipe keys in point names


def _short(key: str, loss_name: Optional[str]) -> str:
    """The short name of a point's key: the objective's own for its arguments (``loss.sigma`` -> ``s``); when the
    point does not name its loss, the short name every objective with that argument agrees on."""
    parts = key.split('.')
    if parts[0] == 'loss' and len(parts) == 2:
        names = [loss_name] if loss_name in list_losses() else list_losses()
        shorts = {loss_class(n).short_names()[parts[1]] for n in names if parts[1] in loss_class(n).defaults()}
        if len(shorts) == 1:
            return shorts.pop()
    return RECIPE_SHORT.get(parts[-1], parts[-1])


def format_value(v: Any, key: str = '') -> str:
    if isinstance(v, dict):
        loss_name = v.get('name') if key == 'loss' else None
        return '-'.join([str(v.get('name', 'x'))] + [
            f'{_short(f"loss.{k}" if loss_name else k, loss_name)}{format_value(x)}' for k, x in v.items() if k != 'name'])
    if isinstance(v, float):
        return f'{v:g}'
    return safe_name(v, POINT_CHARS)


def point_name(point: Dict[str, Any]) -> str:
    """A readable, unique folder name for a grid point, e.g. ``s0.5_b1_l0.01_seed0`` (signs kept: ``s-1``)."""
    loss_name = point['loss'].get('name') if isinstance(point.get('loss'), dict) else point.get('loss.name')
    parts = [format_value(v, k) if isinstance(v, dict) else f'{_short(k, loss_name)}{format_value(v)}' for k, v in point.items()]
    return '_'.join(parts) or 'base'

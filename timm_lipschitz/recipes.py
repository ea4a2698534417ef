"""Recipes: YAML data describing one training run. ``extends:`` merging, ``--set key=value`` overrides, and
validation before any training (unknown keys or wrong types fail with the key's dotted path and what is allowed).
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Union

import yaml

__all__ = ['DEFAULTS', 'SCHEMA', 'load_recipe', 'resolve_recipe', 'apply_overrides', 'validate_recipe',
           'RecipeError', 'deep_merge', 'set_dotted', 'get_dotted', 'RECIPES_DIR']

RECIPES_DIR = Path(__file__).resolve().parent.parent / 'recipes'


class RecipeError(ValueError):
    """A recipe key is unknown, mistyped or inconsistent; the message gives its dotted path."""


NUM = (int, float)
ANY = object
# key -> type, tuple of types, nested dict schema, or ANY (free-form, checked by the consumer)
SCHEMA: Dict[str, Any] = {
    'extends': str,
    'name': str,
    'description': str,
    'model': {'name': str, 'pretrained': bool, 'kwargs': dict, 'mean': list, 'std': list},
    'data': {'name': str, 'root': (str, type(None)), 'download': bool, 'input_size': (list, type(None)),
             'train_fraction': NUM, 'augmentation': str, 'fast_path': bool, 'num_workers': int,
             'eval_batch_size': int, 'kwargs': dict},
    'loss': ANY,  # {name: ..., <the loss's own keyword arguments>}; checked against the loss registry
    'optimizer': {'name': str, 'lr': NUM, 'momentum': NUM, 'weight_decay': NUM, 'nesterov': bool, 'betas': list,
                  'eps': NUM},
    'schedule': {'name': str, 'milestones': list, 'decay_rate': NUM, 'warmup_epochs': NUM, 'warmup_lr': NUM,
                 'min_lr': NUM},
    'epochs': (int, type(None)),
    'steps': (int, type(None)),
    'batch_size': int,
    'gradient_accumulation_steps': int,
    'max_grad_norm': (NUM, type(None)),
    'precision': str,
    'seed': int,
    'channels_last': bool,
    'compile': bool,
    'ema': {'enabled': bool, 'decay': NUM},
    'eval': {'sigmas': (list, str), 'repeats': int, 'seed': int, 'clip': bool, 'at_end': bool,
             'every_epochs': int, 'batch_size': int, 'max_images': (int, type(None))},
    'checkpoint': {'every_steps': int, 'keep': int},
    'log_with': list,
    'log_every_steps': int,
    'output_dir': str,
}

DEFAULTS: Dict[str, Any] = {
    'name': 'run',
    'model': {'name': 'cifar_resnet20', 'pretrained': False, 'kwargs': {}},
    'data': {'name': 'synthetic', 'root': None, 'download': False, 'input_size': None, 'train_fraction': 1.0,
             'augmentation': 'none', 'fast_path': False, 'num_workers': 0, 'eval_batch_size': 256, 'kwargs': {}},
    'loss': {'name': 'cross_entropy'},
    'optimizer': {'name': 'sgd', 'lr': 0.1, 'momentum': 0.9, 'weight_decay': 1e-4},
    'schedule': {'name': 'multistep', 'milestones': [], 'decay_rate': 0.1, 'warmup_epochs': 0},
    'epochs': None,
    'steps': None,
    'batch_size': 128,
    'gradient_accumulation_steps': 1,
    'max_grad_norm': None,
    'precision': 'no',
    'seed': 0,
    'channels_last': False,
    'compile': False,
    'ema': {'enabled': False, 'decay': 0.999},
    'eval': {'sigmas': '0:0.5:0.01', 'repeats': 1, 'seed': 0, 'clip': False, 'at_end': True, 'every_epochs': 1,
             'batch_size': 256, 'max_images': None},
    'checkpoint': {'every_steps': 0, 'keep': 2},
    'log_with': ['tensorboard'],
    'log_every_steps': 10,
    'output_dir': 'runs/{name}',
}

CHOICES = {
    'precision': ('no', 'fp16', 'bf16'),
    'schedule.name': ('multistep', 'cosine', 'step', 'none'),
    'optimizer.name': ('sgd', 'momentum', 'adam', 'adamw', 'nadam', 'rmsprop', 'lamb', 'lars'),
    'data.augmentation': ('none', 'crop', 'cifar'),
}


def deep_merge(base: Dict[str, Any], override: Dict[str, Any]) -> Dict[str, Any]:
    """``override`` on top of ``base``, recursively for dicts (lists and scalars are replaced)."""
    out = copy.deepcopy(base)
    for k, v in (override or {}).items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and k != 'loss':
            out[k] = deep_merge(out[k], v)
        elif k == 'loss' and isinstance(v, dict) and isinstance(out.get(k), dict):
            # a loss of another name starts from a clean slate; the same name merges its arguments
            out[k] = deep_merge(out[k], v) if v.get('name', out[k].get('name')) == out[k].get('name') else \
                copy.deepcopy(v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _read_yaml(path: Path) -> Dict[str, Any]:
    if not path.is_file():
        raise RecipeError(f'recipe file {path} does not exist.')
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise RecipeError(f'{path} is not valid YAML: {e}') from e
    if not isinstance(data, dict):
        raise RecipeError(f'{path} must hold a mapping of recipe keys, not {type(data).__name__}.')
    return data


def load_recipe(path: Union[str, Path], _seen: Optional[List[Path]] = None) -> Dict[str, Any]:
    """The recipe in ``path`` with its ``extends:`` chain merged (paths relative to the extending file)."""
    path = Path(path).resolve()
    seen = _seen or []
    if path in seen:
        raise RecipeError(f'extends cycle: {" -> ".join(str(p) for p in seen + [path])}')
    data = _read_yaml(path)
    parent = data.pop('extends', None)
    if parent is None:
        return data
    if not isinstance(parent, str):
        raise RecipeError(f'{path}: extends must be a path string, got {parent!r}.')
    return deep_merge(load_recipe(path.parent / parent, seen + [path]), data)


def set_dotted(d: Dict[str, Any], key: str, value: Any) -> None:
    parts = key.split('.')
    for p in parts[:-1]:
        if not isinstance(d.get(p), dict):
            d[p] = {}
        d = d[p]
    d[parts[-1]] = value


def get_dotted(d: Dict[str, Any], key: str, default: Any = None) -> Any:
    for p in key.split('.'):
        if not isinstance(d, dict) or p not in d:
            return default
        d = d[p]
    return d


def apply_overrides(recipe: Dict[str, Any], overrides: Iterable[str]) -> Dict[str, Any]:
    """Apply ``key=value`` strings; values are parsed as YAML (``loss.sigma=0.5``, ``data.input_size=[1,32,32]``)."""
    out = copy.deepcopy(recipe)
    for item in overrides or ():
        if '=' not in item:
            raise RecipeError(f'override {item!r} is not key=value (e.g. loss.sigma=0.5).')
        key, raw = item.split('=', 1)
        set_dotted(out, key.strip(), yaml.safe_load(raw) if raw.strip() else None)
    return out


def _type_name(t: Any) -> str:
    ts = list(dict.fromkeys(t if isinstance(t, tuple) else (t,)))
    if int in ts and float in ts:
        ts[ts.index(int)] = 'number'
        ts.remove(float)
    return ' or '.join('null' if x is type(None) else x if isinstance(x, str) else x.__name__ for x in ts)


def _check(value: Any, schema: Any, path: str) -> None:
    if schema is ANY:
        return
    if isinstance(schema, dict):
        if not isinstance(value, dict):
            raise RecipeError(f'{path} must be a mapping with keys {sorted(schema)}, got {value!r}.')
        for k, v in value.items():
            sub = f'{path}.{k}' if path else k
            if k not in schema:
                raise RecipeError(f'unknown recipe key {sub!r}; allowed here: {sorted(schema)}.')
            _check(v, schema[k], sub)
        return
    types = schema if isinstance(schema, tuple) else (schema,)
    ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in types)
    if not ok:
        raise RecipeError(f'{path} must be {_type_name(schema)}, got {value!r} ({type(value).__name__}).')


def validate_recipe(recipe: Dict[str, Any]) -> Dict[str, Any]:
    """Check keys, types, choices and the loss's arguments; returns the recipe unchanged."""
    from .losses import loss_arguments, loss_class
    from .robustness.noise import parse_sigmas
    _check(recipe, SCHEMA, '')
    for key, allowed in CHOICES.items():
        v = get_dotted(recipe, key)
        if v is not None and v not in allowed:
            raise RecipeError(f'{key}={v!r} is not allowed; choose one of {allowed}.')
    loss = recipe.get('loss')
    if not isinstance(loss, dict) or not isinstance(loss.get('name'), str):
        raise RecipeError(f'loss must be a mapping with a name, got {loss!r}.')
    try:
        loss_class(loss['name'])
    except ValueError as e:
        raise RecipeError(f'loss.name: {e}') from None
    allowed_args = set(loss_arguments(loss['name'])) - {'mean', 'std', 'seed'}
    for k in loss:
        if k != 'name' and k not in allowed_args:
            raise RecipeError(f'unknown recipe key loss.{k} for loss {loss["name"]!r}; allowed: '
                              f'{sorted(allowed_args)}.')
    if (recipe.get('epochs') is None) == (recipe.get('steps') is None):
        raise RecipeError(f'give exactly one of epochs or steps (got epochs={recipe.get("epochs")!r}, '
                          f'steps={recipe.get("steps")!r}).')
    for key in ('epochs', 'steps', 'batch_size', 'gradient_accumulation_steps'):
        v = recipe.get(key)
        if v is not None and v < 1:
            raise RecipeError(f'{key}={v!r} is not allowed; it must be >= 1.')
    frac = get_dotted(recipe, 'data.train_fraction', 1.0)
    if not 0 < frac <= 1:
        raise RecipeError(f'data.train_fraction={frac!r} is not allowed; it must be in (0, 1].')
    size = get_dotted(recipe, 'data.input_size')
    if size is not None and (len(size) != 3 or not all(isinstance(s, int) and s > 0 for s in size)):
        raise RecipeError(f'data.input_size={size!r} is not allowed; give [channels, height, width].')
    try:
        parse_sigmas(get_dotted(recipe, 'eval.sigmas'))
    except ValueError as e:
        raise RecipeError(f'eval.sigmas: {e}') from None
    for key in ('eval.repeats', 'checkpoint.keep'):
        v = get_dotted(recipe, key)
        if v is not None and v < 1:
            raise RecipeError(f'{key}={v!r} is not allowed; it must be >= 1.')
    return recipe


def resolve_recipe(source: Union[str, Path, Dict[str, Any]], overrides: Sequence[str] = ()) -> Dict[str, Any]:
    """Defaults <- recipe file (with extends) <- overrides, validated; ``output_dir`` gets ``{name}`` filled in."""
    raw = load_recipe(source) if not isinstance(source, dict) else copy.deepcopy(source)
    if isinstance(source, dict) and 'extends' in raw:
        raw = deep_merge(load_recipe(raw.pop('extends')), raw)
    _check(raw, SCHEMA, '')  # the user's own keys first, so typos are reported as written
    # defaults last, under the recipe and its overrides: an override that replaces a whole section (``model={...}``
    # from a grid's include) keeps the defaults of the keys it does not name
    recipe = deep_merge(DEFAULTS, apply_overrides(raw, overrides))
    validate_recipe(recipe)
    recipe['output_dir'] = recipe['output_dir'].format(name=recipe['name'])
    return recipe

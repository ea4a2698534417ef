"""Recipes: YAML data describing one training run. ``extends:`` merging, ``--set key=value`` overrides, and
validation before any training: unknown keys, wrong types, values out of range and the objective's own argument
checks all fail with the key's dotted path and what is allowed. Torch-free, so the command line answers a
mistaken recipe in well under a second.
"""
from __future__ import annotations

import copy
import math
import importlib
import importlib.machinery
import importlib.util
import os
import sys
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import yaml

from .errors import UsageError
from .losses import HyperparameterError, loss_class
from .numbers import NumberLoader, check_number, load_yaml
from .protocol import PAPER_GRID, parse_sigmas

__all__ = ['DEFAULTS', 'SCHEMA', 'load_recipe', 'resolve_recipe', 'apply_overrides', 'validate_recipe',
           'RecipeError', 'deep_merge', 'set_dotted', 'get_dotted', 'RECIPES_DIR', 'TRACKERS', 'RESUME_SAFE',
           'recipe_differences', 'flatten', 'import_plugins', 'ResolvedRecipe', 'under', 'differing_keys']

RECIPES_DIR = Path(__file__).resolve().parent.parent / 'recipes'


class RecipeError(UsageError):
    """A recipe key is unknown, mistyped or inconsistent; the message gives its dotted path."""


class ResolvedRecipe(dict):
    """What :func:`resolve_recipe` returns: defaults merged, overrides applied, validated, plugins imported in this
    process. The trainer takes it as it is instead of resolving it a second time (the command line resolves first,
    so a mistake is answered before torch loads); anything else it resolves itself."""


NUM = (int, float)
ANY = object
# key -> type, tuple of types, nested dict schema, or ANY (free-form, checked by the consumer)
SCHEMA: Dict[str, Any] = {
    'extends': str,
    'plugins': list,
    'name': str,
    'description': str,
    'model': {'name': str, 'pretrained': bool, 'kwargs': dict, 'mean': list, 'std': list,
              'checkpoint': (str, type(None))},
    'data': {'name': str, 'root': (str, type(None)), 'download': bool, 'input_size': (list, type(None)),
             'train_fraction': NUM, 'augmentation': str, 'fast_path': bool, 'num_workers': int,
             'eval_batch_size': int, 'kwargs': dict},
    'loss': ANY,  # {name: ..., <the loss's own keyword arguments>}; checked against the loss registry
    'optimizer': {'name': str, 'lr': NUM, 'momentum': NUM, 'weight_decay': NUM, 'nesterov': bool, 'betas': list,
                  'eps': NUM, 'fused': bool, 'foreach': bool},
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
    'compile': (bool, str),
    'compile_mode': str,
    'ema': {'enabled': bool, 'decay': NUM},
    'eval': {'sigmas': (list, str), 'repeats': int, 'seed': int, 'clip': bool, 'at_end': bool,
             'every_epochs': int, 'batch_size': int, 'max_images': (int, type(None))},
    'checkpoint': {'every_steps': int, 'every_epochs': int, 'keep': int},
    'sync_batchnorm': bool,
    'log_with': list,
    'threads': (int, str),
    'log_every_steps': int,
    'output_dir': str,
}

DEFAULTS: Dict[str, Any] = {
    'name': 'run',
    'plugins': [],
    'model': {'name': 'cifar_resnet20', 'pretrained': False, 'kwargs': {}, 'checkpoint': None},
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
    'compile_mode': 'default',
    'ema': {'enabled': False, 'decay': 0.999},
    'eval': {'sigmas': PAPER_GRID, 'repeats': 1, 'seed': 0, 'clip': False, 'at_end': True, 'every_epochs': 1,
             'batch_size': 256, 'max_images': None},
    'checkpoint': {'every_steps': 0, 'every_epochs': 1, 'keep': 2},
    'sync_batchnorm': False,
    'log_with': [],
    'threads': 'auto',
    'log_every_steps': 10,
    'output_dir': 'runs/{name}',
}

CHOICES = {
    'precision': ('no', 'fp16', 'bf16'),
    'compile': (False, True, 'model', 'step'),
    'compile_mode': ('default', 'reduce-overhead', 'max-autotune', 'max-autotune-no-cudagraphs'),
    'schedule.name': ('multistep', 'cosine', 'step', 'none'),
    'optimizer.name': ('sgd', 'momentum', 'adam', 'adamw', 'nadam', 'rmsprop', 'lamb', 'lars'),
    'data.augmentation': ('none', 'crop', 'cifar'),
}


# Accelerate's tracker names and the package each needs (``log_with`` is refused when the package is missing:
# Accelerate would otherwise drop the tracker without a word).
TRACKERS = {'tensorboard': ('tensorboard', 'tensorboardX'), 'wandb': ('wandb',), 'mlflow': ('mlflow',),
            'comet_ml': ('comet_ml',), 'aim': ('aim',), 'clearml': ('clearml',), 'dvclive': ('dvclive',),
            'swanlab': ('swanlab',), 'trackio': ('trackio',)}

# Keys that may change when a run is resumed (recorded in metrics.jsonl); any other difference is refused: it would
# train the rest of the run on something else than its start. data.root may move only to the same data: the trainer
# compares the training split's fingerprint with the one the run recorded at its start (runs.DATA_NAME).
RESUME_SAFE = ('name', 'description', 'output_dir', 'epochs', 'steps', 'log_with', 'threads', 'log_every_steps',
               'eval',
               'checkpoint', 'data.root', 'data.download', 'data.num_workers', 'data.eval_batch_size', 'compile',
               'compile_mode', 'optimizer.foreach')


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


MAX_RECIPE_BYTES = 2 ** 20  # a recipe is a page of settings; a larger file is a mistake (a 100 MB one parsed for minutes)


class _UniqueKeyLoader(NumberLoader):
    """YAML's safe loader with the package's numbers (``1e-3`` is a number), refusing a key given twice in one
    mapping (plain YAML silently keeps the last)."""

    def construct_mapping(self, node, deep=False):
        lines: Dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == 'tag:yaml.org,2002:merge':
                continue
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            if key in lines:
                raise yaml.constructor.ConstructorError(
                    None, None, f'duplicate key {key!r} at lines {lines[key]} and {line} (YAML would keep only the '
                    f'last one silently); give it once', key_node.start_mark)
            lines[key] = line
        return super().construct_mapping(node, deep)


def read_yaml_file(path: Path, what: str = 'recipe', error: type = RecipeError) -> Dict[str, Any]:
    """A YAML mapping from a file, with an error that says what is wrong: a missing file, a directory, a binary or
    oversized file, an empty file, invalid YAML, a duplicate key (with both lines), or not a mapping."""
    if path.is_dir():
        raise error(f'{what} file {path} is a directory; give the YAML file itself.')
    if not path.is_file():
        raise error(f'{what} file {path} does not exist.')
    size = path.stat().st_size
    if size > MAX_RECIPE_BYTES:
        raise error(f'{what} file {path} has {size:,} bytes; a {what} is at most {MAX_RECIPE_BYTES:,} bytes of YAML '
                    f'settings (is it the right file?).')
    raw = path.read_bytes()
    try:
        if b'\x00' in raw:
            raise UnicodeDecodeError('utf-8', raw, raw.index(b'\x00'), raw.index(b'\x00') + 1, 'NUL byte')
        text = raw.decode('utf-8')
    except UnicodeDecodeError:
        raise error(f'{what} file {path} is a binary file, not YAML text.') from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, 'problem_mark', None)
        where = f' (line {mark.line + 1}, column {mark.column + 1})' if mark is not None else ''
        raise error(f'{path} is not a valid {what}: {getattr(e, "problem", None) or e}{where}.') from None
    if data is None:
        raise error(f'{what} file {path} is empty; give at least one setting (see recipes/ for examples).')
    if not isinstance(data, dict):
        raise error(f'{path} must hold a mapping of {what} keys, not {type(data).__name__}.')
    return data


def _read_yaml(path: Path) -> Dict[str, Any]:
    return read_yaml_file(path)


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
        set_dotted(out, key.strip(), load_yaml(raw) if raw.strip() else None)
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


def _require(ok: bool, key: str, value: Any, rule: str) -> None:
    if not ok:
        raise RecipeError(f'{key}={value!r} is not allowed; {rule}.')


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _check_loss(loss: Any) -> None:
    """The loss name, its argument names, and the objective's own argument checks (reported as ``loss.<arg>``)."""
    if not isinstance(loss, dict) or not isinstance(loss.get('name'), str):
        raise RecipeError(f'loss must be a mapping with a name, got {loss!r}.')
    try:
        cls = loss_class(loss['name'])
    except ValueError as e:
        raise RecipeError(f'loss.name: {e}') from None
    allowed = set(cls.defaults())
    for k in loss:
        if k != 'name' and k not in allowed:
            raise RecipeError(f'unknown recipe key loss.{k} for loss {loss["name"]!r}; allowed: {sorted(allowed)}.')
    try:
        cls(seed=0, **{k: v for k, v in loss.items() if k != 'name'})
    except HyperparameterError as e:
        raise RecipeError(str(e.renamed('loss.'))) from None


DROP_RATES = ('drop_rate', 'drop_path_rate', 'drop_block_rate')  # timm's model arguments that are probabilities


def _check_finite(value: Any, key: str) -> None:
    """Every number anywhere in a recipe is finite: YAML's .inf or .nan in a rate, a sigma or a target diverges at
    the first step or corrupts a record (the objectives, optimizer and schedule state their own ranges too)."""
    if isinstance(value, dict):
        for k, v in value.items():
            _check_finite(v, f'{key}.{k}' if key else str(k))
    elif isinstance(value, list):
        for v in value:
            _check_finite(v, key)
    elif isinstance(value, float) and not math.isfinite(value):
        raise RecipeError(f'{key}={value!r} is not allowed; give a finite number.')


def _check_numbers(recipe: Dict[str, Any]) -> None:
    """Ranges of the numeric keys: each refusal names the dotted key and what is allowed."""
    _check_finite(recipe, '')
    for key in DROP_RATES:
        check_number(f'model.kwargs.{key}', get_dotted(recipe, f'model.kwargs.{key}'), low=0, high=1, high_open=True,
                     allow_none=True, error=RecipeError)
    for key in ('epochs', 'steps', 'batch_size', 'gradient_accumulation_steps', 'log_every_steps', 'eval.repeats',
                'eval.batch_size', 'data.eval_batch_size', 'checkpoint.keep', 'eval.max_images'):
        v = get_dotted(recipe, key)
        _require(v is None or v >= 1, key, v, 'it must be >= 1')
    for key in ('checkpoint.every_steps', 'checkpoint.every_epochs', 'eval.every_epochs', 'data.num_workers'):
        v = get_dotted(recipe, key)
        _require(v is None or v >= 0, key, v, 'it must be >= 0 (0 turns it off)')
    for key in ('seed', 'eval.seed'):  # torch and numpy generators take seeds >= 0 (and below 2**63)
        v = get_dotted(recipe, key)
        _require(v is None or 0 <= v < 2 ** 63, key, v, 'it must be an integer from 0 to 2**63 - 1')
    v = recipe.get('threads', 'auto')
    _require(v == 'auto' or isinstance(v, int) and not isinstance(v, bool) and v >= 1, 'threads', v,
             "give 'auto' (the CPUs this process may use, shared among the processes on this machine) or an "
             "integer >= 1")
    v = recipe.get('max_grad_norm')
    _require(v is None or v > 0, 'max_grad_norm', v, 'it must be > 0, or null for no clipping')
    v = get_dotted(recipe, 'ema.decay')
    _require(v is None or 0 < v < 1, 'ema.decay', v, 'it must be in (0, 1), e.g. 0.999')
    for key, lo, rule in (('optimizer.lr', 0, '> 0'), ('schedule.decay_rate', 0, '> 0')):
        v = get_dotted(recipe, key)
        _require(v is None or v > lo, key, v, f'it must be {rule}')
    for key in ('optimizer.weight_decay', 'optimizer.momentum', 'schedule.warmup_epochs', 'schedule.min_lr'):
        v = get_dotted(recipe, key)
        _require(v is None or v >= 0, key, v, 'it must be >= 0')
    momentum = get_dotted(recipe, 'optimizer.momentum')
    _require(momentum is None or momentum < 1, 'optimizer.momentum', momentum, 'it must be in [0, 1)')
    frac = get_dotted(recipe, 'data.train_fraction', 1.0)
    _require(0 < frac <= 1, 'data.train_fraction', frac, 'it must be in (0, 1]')
    size = get_dotted(recipe, 'data.input_size')
    _require(size is None or (len(size) == 3 and all(isinstance(s, int) and not isinstance(s, bool) and s > 0
                                                     for s in size)),
             'data.input_size', size, 'give [channels, height, width]')
    milestones = (get_dotted(recipe, 'schedule.milestones') or []) if \
        get_dotted(recipe, 'schedule.name') == 'multistep' else []
    _require(all(_is_num(m) and m >= 0 for m in milestones) and list(milestones) == sorted(set(milestones)),
             'schedule.milestones', milestones, 'give epochs >= 0 in increasing order')
    epochs = recipe.get('epochs')
    _require(epochs is None or not milestones or max(milestones) < epochs, 'schedule.milestones', milestones,
             f'every milestone must fall before the last epoch (epochs={epochs}), or it never decays the lr')
    mean, std = get_dotted(recipe, 'model.mean'), get_dotted(recipe, 'model.std')
    _require((mean is None) == (std is None), 'model.mean', mean, 'give model.mean and model.std together')
    if mean is not None:
        _require(len(mean) == len(std) and all(_is_num(m) for m in mean), 'model.mean', mean,
                 f'give one number per channel, as many as model.std={std!r}')
        _require(all(_is_num(x) and x > 0 for x in std), 'model.std', std, 'every std must be a number > 0')


def _check_trackers(log_with: List[Any]) -> None:
    for name in log_with:
        _require(name in TRACKERS, 'log_with', name, f'choose trackers among {sorted(TRACKERS)}')
        if not any(importlib.util.find_spec(pkg) is not None for pkg in TRACKERS[name]):
            extra = ' or pip install timm-lipschitz[tensorboard]' if name == 'tensorboard' else ''
            raise RecipeError(f'log_with: tracker {name!r} needs the {TRACKERS[name][0]} package, which is not '
                              f'installed (pip install {TRACKERS[name][0]}{extra}), or remove it from log_with.')


def validate_recipe(recipe: Dict[str, Any]) -> Dict[str, Any]:
    """Check keys, types, choices, ranges, trackers and the loss's arguments; returns the recipe unchanged.

    What needs the model or the machine (``model.kwargs``, fp16 without a GPU) is checked by the trainer before
    any data is read (:func:`timm_lipschitz.train.check_runtime`).
    """
    _check(recipe, SCHEMA, '')
    for key, allowed in CHOICES.items():
        v = get_dotted(recipe, key)
        if v is not None and v not in allowed:
            raise RecipeError(f'{key}={v!r} is not allowed; choose one of {allowed}.')
    _check_loss(recipe.get('loss'))
    if (recipe.get('epochs') is None) == (recipe.get('steps') is None):
        raise RecipeError(f'give exactly one of epochs or steps (got epochs={recipe.get("epochs")!r}, '
                          f'steps={recipe.get("steps")!r}).')
    _check_numbers(recipe)
    try:
        parse_sigmas(get_dotted(recipe, 'eval.sigmas'))
    except ValueError as e:
        raise RecipeError(f'eval.sigmas: {e}') from None
    _check_trackers(recipe.get('log_with') or [])
    return recipe


def flatten(d: Dict[str, Any], prefix: str = '') -> Dict[str, Any]:
    """Dotted keys of every leaf (``model.kwargs.hidden_dim``); lists and empty mappings are leaves."""
    out: Dict[str, Any] = {}
    for k, v in d.items():
        key = f'{prefix}{k}'
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + '.'))
        else:
            out[key] = v
    return out


def under(key: str, prefixes: Sequence[str]) -> bool:
    """Whether the dotted ``key`` is one of ``prefixes`` or lies below one (``eval.sigmas`` is under ``eval``)."""
    return any(key == p or key.startswith(p + '.') for p in prefixes)


def differing_keys(a: Dict[str, Any], b: Dict[str, Any]) -> List[str]:
    """The dotted keys where two resolved recipes differ, sorted. A key missing on one side counts as its default
    (a recipe saved by an older version lacks newer keys)."""
    fa, fb = flatten(deep_merge(DEFAULTS, a)), flatten(deep_merge(DEFAULTS, b))
    return sorted(k for k in set(fa) | set(fb) if fa.get(k) != fb.get(k))


def recipe_differences(saved: Dict[str, Any], new: Dict[str, Any]) -> Tuple[List[str], List[str]]:
    """(refused, allowed): the keys where two resolved recipes differ (:func:`differing_keys`), split by
    :data:`RESUME_SAFE`."""
    diff = differing_keys(saved, new)
    safe = [k for k in diff if under(k, RESUME_SAFE)]
    return [k for k in diff if k not in safe], safe


TRUST_LOCAL_PLUGINS = 'TIMM_LIPSCHITZ_TRUST_LOCAL_PLUGINS'  # =1: plugins may come from the current or recipe folder


def _local_dirs(recipe_dir: Optional[Path]) -> List[Path]:
    return [Path.cwd().resolve()] + ([recipe_dir.resolve()] if recipe_dir is not None else [])


def _plugin_origin(name: str, recipe_dir: Optional[Path]) -> Tuple[Optional[str], bool]:
    """Where ``import name`` would load the plugin from, and whether that is the current directory or the recipe's
    folder (``python -m`` puts the current directory first on the path, so a file there shadows any package). A
    folder the user put on ``PYTHONPATH`` by name is their own choice, not a local one."""
    top = name.split('.')[0]
    local = _local_dirs(recipe_dir)
    chosen = {Path(p).resolve() for p in os.environ.get('PYTHONPATH', '').split(os.pathsep) if p}  # the user's own
    is_local = lambda entry: Path(entry or '.').resolve() in local and (  # noqa: E731
        not entry or Path(entry).resolve() not in chosen)
    spec = importlib.util.find_spec(top)
    trusted = importlib.machinery.PathFinder.find_spec(top, [p for p in sys.path if not is_local(p)])
    origin = spec.origin if spec is not None else None
    from_local = spec is not None and (trusted is None or trusted.origin != origin) and top not in sys.modules
    return origin, from_local


def import_plugins(modules: List[Any], recipe_dir: Optional[Path] = None) -> None:
    """Import the recipe's ``plugins`` (module names on the Python path) before anything is checked, so the
    objectives, models and datasets they register can be named in the recipe. Importing runs the module's code: each
    import says which file it runs, and a module found in the current directory or the recipe's folder (a recipe
    downloaded next to a ``.py`` file) is refused unless the user trusts it (``--trust-local-plugins`` or
    ``TIMM_LIPSCHITZ_TRUST_LOCAL_PLUGINS=1``)."""
    for name in modules:
        if not isinstance(name, str) or not name.replace('.', '').replace('_', '').isalnum():
            raise RecipeError(f'plugins: {name!r} is not a module name.')
        if name in sys.modules:
            continue
        origin, local = _plugin_origin(name, recipe_dir)
        if local and os.environ.get(TRUST_LOCAL_PLUGINS) != '1':
            raise RecipeError(
                f'plugins: {name!r} would be imported from {origin}, in the current directory or the recipe\'s '
                f'folder, and importing runs its code. Refused unless you trust it: add --trust-local-plugins (or '
                f'set {TRUST_LOCAL_PLUGINS}=1, which launched processes inherit), or install the module.')
        try:
            importlib.import_module(name)
        except ImportError as e:
            raise RecipeError(f'plugins: cannot import {name!r} ({e}); it must be a module on the Python path '
                              f'(PYTHONPATH or an installed package).') from None
        print(f'plugins: imported {name} from {getattr(sys.modules[name], "__file__", None) or origin}',
              file=sys.stderr, flush=True)


def resolve_recipe(source: Union[str, Path, Dict[str, Any]], overrides: Sequence[str] = ()) -> Dict[str, Any]:
    """Defaults <- recipe file (with extends) <- overrides, validated; ``output_dir`` gets ``{name}`` filled in."""
    raw = load_recipe(source) if not isinstance(source, dict) else copy.deepcopy(source)
    if isinstance(source, dict) and 'extends' in raw:
        raw = deep_merge(load_recipe(raw.pop('extends')), raw)
    _check(raw, SCHEMA, '')  # the user's own keys first, so typos are reported as written
    import_plugins(apply_overrides(raw, overrides).get('plugins') or [],
                   Path(source).parent if not isinstance(source, dict) else None)
    # defaults last, under the recipe and its overrides: an override that replaces a whole section (``model={...}``
    # from a grid's include) keeps the defaults of the keys it does not name
    recipe = deep_merge(DEFAULTS, apply_overrides(raw, overrides))
    validate_recipe(recipe)
    recipe['output_dir'] = recipe['output_dir'].format(name=recipe['name'])
    return ResolvedRecipe(recipe)

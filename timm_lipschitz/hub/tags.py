"""Pretrained tags: ``<objective>_<setting>_<dataset>``, e.g. ``lipschitz_hinge_s050_b1_l001_fmnist``.

A tag names its configuration unambiguously and parses back to it (:func:`parse_tag`). The setting lists the
objective's ``tag_always`` hyperparameters, then every other hyperparameter that differs from its default, each as
``<short name><value>`` with the objective's own short names (``s`` sigma, ``b`` beta, ``l`` L_n, ...). Values:

- numbers below 1 start with 0 and drop the dot (0.5 -> ``050``, 0.01 -> ``001``, 0.005 -> ``0005``); whole numbers
  are written as such (1 -> ``1``, 10 -> ``10``); other numbers above 1 write the dot as ``p`` (1.5 -> ``1p5``);
  negative numbers start with ``m`` (-1 -> ``m1``);
- booleans ``1`` / ``0``; a registered loss (``task_loss``) its name without underscores, its own non-default
  arguments after ``-``; other strings as they are (``oprobs``: output = probs).

Datasets have short names (:data:`DATASET_TAGS`); others are written lower-case without punctuation.
"""
from __future__ import annotations

import re
from decimal import Decimal
from typing import Any, Dict, NamedTuple, Tuple

from ..errors import UsageError
from ..losses import list_losses, loss_class
from ..naming import TAG_CHARS, compact, safe_name

__all__ = ['make_tag', 'parse_tag', 'ParsedTag', 'DATASET_TAGS', 'encode_number', 'decode_number', 'TagError']

DATASET_TAGS = {'fashion_mnist': 'fmnist', 'mnist_5k': 'mnist5k', 'digits': 'digits', 'mnist': 'mnist',
                'cifar10': 'c10', 'cifar100': 'c100', 'stl10': 'stl10'}


class TagError(UsageError):
    """A tag or a value cannot be written or read in the tag scheme."""


class ParsedTag(NamedTuple):
    objective: str
    hparams: Dict[str, Any]   # every hyperparameter, defaults included
    dataset: str              # the dataset's registered name where the short name is known


def encode_number(v: float) -> str:
    """0.5 -> '050', 0.01 -> '001', 1 -> '1', 10 -> '10', 1.5 -> '1p5', -1 -> 'm1', 0 -> '0'.

    Written from the shortest decimal that reads back as the same float (Python's ``repr``), so every finite value
    has an exact tag (1e-11 -> ``000000000001``, not ``000``); a tag never names another value than the one trained.
    """
    v = float(v)
    if v != v or v in (float('inf'), float('-inf')):
        raise TagError(f'{v} cannot be written in a tag.')
    if v < 0:
        return 'm' + encode_number(-v)
    if v == int(v) and abs(v) < 1e16:
        text = str(int(v))
    else:
        whole, _, frac = format(Decimal(repr(v)), 'f').partition('.')
        frac = frac.rstrip('0')
        text = '0' + frac.ljust(2, '0') if whole == '0' else f'{whole}p{frac}' if frac else whole
    if decode_number(text) != v:  # a safety net: the scheme must read back exactly what was trained
        raise TagError(f'{v!r} cannot be written exactly in a tag (it would read back as {decode_number(text)!r}).')
    return text


def decode_number(text: str) -> float:
    """The inverse of :func:`encode_number`."""
    if not re.fullmatch(r'm?(0\d+|0|[1-9]\d*(p\d+)?)', text):
        raise TagError(f'{text!r} is not a number in the tag scheme.')
    if text.startswith('m'):
        return -decode_number(text[1:])
    if 'p' in text:
        return float(text.replace('p', '.'))
    if text.startswith('0') and len(text) > 1:
        return float('0.' + text[1:])
    return float(text)


def _encode(value: Any, default: Any, what: str) -> str:
    if isinstance(value, bool):
        return '1' if value else '0'
    if isinstance(value, (int, float)):
        return encode_number(value)
    if isinstance(value, dict) and isinstance(value.get('name'), str):
        name = value['name']
        args = {k: v for k, v in value.items() if k != 'name'}
        return compact(name) + ''.join('-' + p for p in _setting(name, args, always=False))
    if isinstance(value, str) and value in list_losses():
        return compact(value)
    if isinstance(value, str) and re.fullmatch(r'[a-z0-9]+', value):
        return value
    raise TagError(f'{what}={value!r} cannot be written in a tag (numbers, booleans, loss names and lower-case '
                   f'alphanumeric strings can).')


def _decode(text: str, default: Any) -> Any:
    if isinstance(default, bool):
        if text not in ('0', '1'):
            raise TagError(f'{text!r} is not a boolean (1 or 0).')
        return text == '1'
    if isinstance(default, (int, float)):
        v = decode_number(text)
        return int(v) if isinstance(default, int) and v == int(v) else v
    name, *args = text.split('-')
    by_compact = {compact(n): n for n in list_losses()}
    if name in by_compact:
        loss = by_compact[name]
        if not args:
            return loss
        return {'name': loss, **_parse_setting(loss, args)}
    return text


def _setting(objective: str, hparams: Dict[str, Any], always: bool = True) -> list:
    cls = loss_class(objective)
    defaults, short = cls.defaults(), cls.short_names()
    full = cls.resolve_hparams(hparams)
    keys = [k for k in cls.tag_always if always] + \
        [k for k in defaults if k not in (cls.tag_always if always else ()) and full[k] != defaults[k]]
    return [short[k] + _encode(full[k], defaults[k], k) for k in keys]


def _parse_setting(objective: str, parts: list) -> Dict[str, Any]:
    cls = loss_class(objective)
    defaults = cls.defaults()
    by_short = sorted(((s, k) for k, s in cls.short_names().items()), key=lambda sk: -len(sk[0]))
    out: Dict[str, Any] = {}
    for part in parts:
        match = next(((s, k) for s, k in by_short if part.startswith(s) and len(part) > len(s)), None)
        if match is None:
            raise TagError(f'{part!r} names no hyperparameter of {objective} (short names: '
                           f'{cls.short_names()}).')
        s, k = match
        out[k] = _decode(part[len(s):], defaults[k])
    return out


def dataset_code(dataset: str) -> str:
    return DATASET_TAGS.get(dataset, safe_name(dataset.lower(), TAG_CHARS))


def make_tag(objective: str, hparams: Dict[str, Any], dataset: str) -> str:
    """``<objective>_<setting>_<dataset>`` (module doc), e.g. ``lipschitz_hinge_s050_b1_l001_fmnist``."""
    return '_'.join([objective, *_setting(objective, hparams), dataset_code(dataset)])


def parse_tag(tag: str) -> ParsedTag:
    """The objective, its full hyperparameters and the dataset a tag names; :class:`TagError` if it names none."""
    objective = max((n for n in list_losses() if tag.startswith(n + '_')), key=len, default=None)
    if objective is None:
        raise TagError(f'tag {tag!r} starts with no registered objective ({list_losses()}).')
    *parts, code = tag[len(objective) + 1:].split('_')
    datasets = {v: k for k, v in DATASET_TAGS.items()}
    hparams = loss_class(objective).resolve_hparams(_parse_setting(objective, parts))
    return ParsedTag(objective, hparams, datasets.get(code, code))


def same_configuration(tag: str, objective: str, hparams: Dict[str, Any], dataset: str) -> Tuple[bool, str]:
    """Whether ``tag`` names this configuration; with the reason when it does not."""
    parsed = parse_tag(tag)
    full = loss_class(objective).resolve_hparams(hparams)
    if parsed.objective != objective or dataset_code(parsed.dataset) != dataset_code(dataset):
        return False, f'{tag} is {parsed.objective} on {parsed.dataset}, not {objective} on {dataset}'
    diff = {k: (parsed.hparams.get(k), full.get(k)) for k in full if parsed.hparams.get(k) != full.get(k)}
    return (not diff, '' if not diff else f'{tag} differs in {diff}')

"""What an evaluation runs on: the device and each model's evaluation data, with the checks of its overrides. Where the
models come from is :mod:`timm_lipschitz.hub.sources` (``load_model`` is re-exported here)."""
from __future__ import annotations

import warnings
from typing import Any, Dict, List, Optional, Sequence

import torch
import torch.nn as nn

from ..data import check_labels, create_dataset, evaluated_fingerprint
from ..errors import UsageError
from ..hub.sources import load_model
from ..modes import eval_mode
from ..normalization import per_channel
from ..robustness.subsets import evaluation_subset

__all__ = ['load_model', 'resolve_device', 'device_name', 'data_for', 'check_overrides', 'ClassNamesWarning',
           'OverrideWarning']


class ClassNamesWarning(UserWarning):
    """The model's class names differ from the evaluation data's: the accuracy compares unrelated labels."""


class OverrideWarning(UserWarning):
    """An evaluation override (input size, mean/std) departs from the model's own configuration."""


def check_overrides(model: nn.Module, input_size: Optional[Sequence[int]], mean, std) -> Dict[str, Any]:
    """What the evaluation changes of the model's own configuration, for the record; a warning for each departure
    (a wrong size or normalization costs most of the accuracy without an error), and a refusal of statistics whose
    channel count the model cannot take."""
    cfg = model.pretrained_cfg
    channels = int(cfg['input_size'][0])
    overrides: Dict[str, Any] = {}
    if input_size:
        overrides['input_size'] = [int(v) for v in input_size]
        if tuple(input_size) != tuple(cfg['input_size']):
            warnings.warn(f'--input-size {",".join(map(str, input_size))} departs from the model\'s own input size '
                          f'{tuple(cfg["input_size"])}: the images are resized to it.', OverrideWarning, stacklevel=3)
    if mean is not None:
        for flag, values in (('--mean', mean), ('--std', std)):
            if len(values) not in (1, channels):
                raise UsageError(f'{flag} has {len(values)} values but the model takes {channels} channel(s); give '
                                 f'1 or {channels}.')
        overrides.update(mean=list(mean), std=list(std))
        own = (cfg.get('mean'), cfg.get('std'))
        as_channels = lambda pair: [per_channel(tuple(v), channels, w) for v, w in zip(pair, ('mean', 'std'))]  # noqa
        if own[0] is not None and as_channels((mean, std)) != as_channels(own):
            warnings.warn(f'--mean {list(mean)} --std {list(std)} depart from the statistics the model was trained '
                          f'with (mean {list(own[0])}, std {list(own[1])}): expect a far lower accuracy.',
                          OverrideWarning, stacklevel=3)
    return overrides


def device_name(device: torch.device) -> str:
    """``cpu`` or e.g. ``cuda:0 (NVIDIA H200)``: recorded with results, since GPU convolutions (cuDNN, TF32 by
    default) can flip a few borderline images against a CPU evaluation of the same weights."""
    if device.type == 'cuda':
        return f'{device} ({torch.cuda.get_device_name(device)})'
    return str(device)


def resolve_device(name: str = 'auto') -> torch.device:
    """'auto' picks CUDA when there is one: a 51-level sweep of a 10k test set is minutes on a CPU, seconds on a GPU."""
    if name == 'auto':
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise UsageError(f'--device {name!r} is not a device; use auto, cpu, cuda or cuda:N.') from e
    if device.type not in ('cpu', 'cuda'):
        raise UsageError(f'--device {name!r} is not supported; use auto, cpu, cuda or cuda:N.')
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise UsageError(f'--device {name!r}: CUDA is not available on this machine; use auto or cpu.')
    return device


def model_input_size(model: nn.Module, input_size: Optional[Sequence[int]]) -> Optional[List[int]]:
    """An evaluation's input size for one model: as given, with channels 0 (``--img-size N``) read as the model's."""
    if not input_size:
        return None
    size = [int(v) for v in input_size]
    return [int(model.pretrained_cfg['input_size'][0]), *size[1:]] if size[0] == 0 else size


def _check_input_size(model: nn.Module, size: Sequence[int]) -> None:
    """One forward of a zero image at ``size``: a size the model cannot take fails here, naming the flag."""
    try:
        with eval_mode(model), torch.no_grad():
            model(torch.zeros(1, *size))
    except RuntimeError as e:
        raise UsageError(f'--input-size {",".join(map(str, size))} does not fit the model (its pretrained_cfg '
                         f'input_size is {tuple(model.pretrained_cfg["input_size"])}): {str(e).splitlines()[0]}') \
            from None


def _check_classes(model: nn.Module, name: str, dinfo) -> None:
    if dinfo.num_classes > model.num_classes:
        raise UsageError(f'{name} has {dinfo.num_classes} classes but the model has num_classes='
                         f'{model.num_classes}; evaluate it on data with at most {model.num_classes} classes.')
    own = list(model.pretrained_cfg.get('label_names') or [])
    if own and dinfo.class_names and own[:len(dinfo.class_names)] != list(dinfo.class_names):
        warnings.warn(f'the model was trained on classes {own[:4]}... but {name} has {dinfo.class_names[:4]}...: '
                      f'its accuracy there compares unrelated labels.', ClassNamesWarning, stacklevel=3)


def data_for(model: nn.Module, info: Dict[str, Any], data: Optional[str], root: Optional[str],
             input_size: Optional[Sequence[int]], split: str, max_images: Optional[int], seed: int = 0):
    """The evaluation split for one model (its own training data unless ``data`` names other data), checked against
    the model's class count and names; ``max_images`` takes a prefix of the split's evaluation order (stratified,
    :mod:`timm_lipschitz.robustness.subsets`). An explicit root is used or refused, never replaced by a found one.
    Returns ``(dataset, name, where)``: ``where`` records the root given, the files read and the fingerprint of the
    evaluated images and labels (``eval.json`` keeps it)."""
    recipe_data = info['recipe'].get('data', {})
    name = data or recipe_data.get('name') or info['metadata'].get('dataset')
    if not name:
        raise UsageError('which data? give --data NAME (the model carries no record of its training data).')
    size = tuple(input_size) if input_size else tuple(model.pretrained_cfg['input_size'])
    if input_size:
        _check_input_size(model, size)
    kwargs = recipe_data.get('kwargs', {}) if name == recipe_data.get('name') else {}
    root = root or recipe_data.get('root')
    ds, dinfo = create_dataset(name, split, root=root, input_size=size, **kwargs)
    _check_classes(model, name, dinfo)
    if hasattr(ds, 'labels'):
        check_labels(ds.labels, model.num_classes, f'{name}/{split}')
    subset = evaluation_subset(ds, max_images, seed)
    return subset, name, {'root': None if root is None else str(root), 'source': dinfo.source,
                          'fingerprint': evaluated_fingerprint(subset)}

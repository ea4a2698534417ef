"""What an evaluation runs on: models from run folders, checkpoint folders, checkpoint files or registered tags
(with what is known of how they were trained), the device, and each model's evaluation data."""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import timm
import torch
import torch.nn as nn
import yaml
from safetensors import safe_open

from ..data import check_labels, create_dataset
from ..errors import UsageError
from ..fileio import read_json
from ..hub import CheckpointError, load_checkpoint, load_pretrained, read_metadata
from ..modes import eval_mode
from ..normalization import per_channel
from ..robustness.subsets import evaluation_subset
from ..runs import run_status

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


def _unfinished_message(folder: Path) -> Optional[str]:
    """Why a run folder without final weights cannot be evaluated (a checkpoint folder has no run and is fine)."""
    status = run_status(folder)
    if status and status.startswith('an unfinished') and not (folder / 'model.safetensors').is_file():
        return (f'{folder} holds {status}: there are no final weights to evaluate. Finish it with '
                f'timm-lipschitz train --recipe {folder / "recipe.yaml"} --resume.')
    return None


def _num_classes_of(checkpoint: str, model_name: str) -> int:
    """The class count a checkpoint file was saved with: its metadata, else its classifier's weight."""
    meta = read_metadata(checkpoint)
    if meta.get('num_classes'):
        return int(meta['num_classes'])
    classifier = getattr(timm.models.get_pretrained_cfg(model_name), 'classifier', None) or 'fc'
    with safe_open(str(checkpoint), framework='pt') as f:
        key = f'{classifier}.weight'
        if key in f.keys():
            return int(f.get_slice(key).get_shape()[0])
    raise UsageError(f'--checkpoint {checkpoint}: its class count is recorded nowhere (no num_classes metadata, '
                     f'no {classifier}.weight); save it with timm_lipschitz.hub.save_pretrained.')


def _args_beside(checkpoint: str) -> Dict[str, Any]:
    """model_args and pretrained_cfg from a config.json next to the checkpoint file, if there is one."""
    cfg_file = Path(checkpoint).parent / 'config.json'
    if not cfg_file.is_file():
        return {}
    cfg = read_json(cfg_file)
    args = {k: v for k, v in cfg.get('model_args', {}).items() if k != 'num_classes'}
    return {**args, 'pretrained_cfg_overlay': cfg.get('pretrained_cfg', {})}


def _from_folder(folder: Path) -> Tuple[nn.Module, Dict[str, Any]]:
    unfinished = _unfinished_message(folder)
    if unfinished:
        raise CheckpointError(unfinished)
    model = load_pretrained(folder)
    recipe = {}
    if (folder / 'recipe.yaml').is_file():
        recipe = yaml.safe_load((folder / 'recipe.yaml').read_text())
    return model, {'label': recipe.get('name') or folder.name, 'recipe': recipe, 'metadata': read_metadata(folder),
                   'folder': folder}


def _from_tag(model_name: str) -> Tuple[nn.Module, Dict[str, Any]]:
    cfg = timm.models.get_pretrained_cfg(model_name)
    if cfg is None or not (cfg.file or cfg.hf_hub_id or cfg.url):
        raise CheckpointError(f'{model_name!r} has no pretrained weights; registered tags with weights: '
                              f'{timm.list_pretrained(model_name.split(".")[0] + "*")}.')
    model = timm.create_model(model_name, pretrained=True)
    meta = read_metadata(cfg.file) if cfg.file else {}
    return model, {'label': model_name, 'recipe': {}, 'metadata': meta}


def load_model(source: Optional[str] = None, model_name: Optional[str] = None, checkpoint: Optional[str] = None,
               pretrained: bool = False) -> Tuple[nn.Module, Dict[str, Any]]:
    """A model and what is known of how it was trained (the run's recipe and the checkpoint's metadata).

    ``source``: a run folder or checkpoint folder (``config.json`` + ``model.safetensors``).
    ``model_name`` with ``checkpoint`` (a safetensors file) or ``pretrained`` (its registered tag).
    """
    if source is not None:
        if not Path(source).exists() and '.' in str(source):
            return _from_tag(str(source))  # a registered tag given where a folder may stand (eval TAG)
        if not Path(source).is_dir():
            raise UsageError(f'{source} is neither a run or checkpoint folder nor a registered tag with weights '
                             f'(e.g. cifar_resnet20.lipschitz_hinge_s050_b1_l001_digits).')
        return _from_folder(Path(source))
    if model_name is None:
        raise UsageError('give a run/checkpoint folder, or --model NAME with --checkpoint PATH or --pretrained.')
    if checkpoint is not None:
        model = timm.create_model(model_name, pretrained=False, num_classes=_num_classes_of(checkpoint, model_name),
                                  **_args_beside(checkpoint))
        load_checkpoint(model, checkpoint)
        return model, {'label': Path(checkpoint).stem if Path(checkpoint).stem != 'model' else model_name,
                       'recipe': {}, 'metadata': read_metadata(checkpoint)}
    if pretrained:
        return _from_tag(model_name)
    raise UsageError(f'--model {model_name} needs --checkpoint PATH or --pretrained.')


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
    :mod:`timm_lipschitz.robustness.subsets`). Returns ``(dataset, name)``."""
    recipe_data = info['recipe'].get('data', {})
    name = data or recipe_data.get('name') or info['metadata'].get('dataset')
    if not name:
        raise UsageError('which data? give --data NAME (the model carries no record of its training data).')
    size = tuple(input_size) if input_size else tuple(model.pretrained_cfg['input_size'])
    if input_size:
        _check_input_size(model, size)
    kwargs = recipe_data.get('kwargs', {}) if name == recipe_data.get('name') else {}
    ds, dinfo = create_dataset(name, split, root=root or recipe_data.get('root'), input_size=size, **kwargs)
    _check_classes(model, name, dinfo)
    if hasattr(ds, 'labels'):
        check_labels(ds.labels, model.num_classes, f'{name}/{split}')
    return evaluation_subset(ds, max_images, seed), name

"""Where a model comes from, in one place: every command that takes a model (``eval``, ``export``, ``publish``,
:func:`load_robustness`) resolves it here.

Sources:

- a run or checkpoint folder (``config.json`` + ``model.safetensors``), also written ``local-dir:<folder>``;
- a registered tag with weights, ``<arch>.<tag>`` (bundled with the package, or from the Hugging Face Hub);
- ``hf-hub:<org>/<repo>`` (a repository written by ``timm-lipschitz publish``);
- a model name with a safetensors file (``--model NAME --checkpoint FILE``), or a safetensors file whose folder holds
  its ``config.json``.

A local folder never sends the resolver to the network: a ``config.json`` whose ``architecture`` is not a registered
architecture (``hf-hub:...`` included) is refused in one line by the one reader of ``config.json``
(:func:`~timm_lipschitz.hub.files.read_config`). A command may still refuse a kind of source it cannot
use (``publish`` takes a finished run folder only).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import timm
import torch.nn as nn
import yaml
from huggingface_hub import hf_hub_download
from safetensors import safe_open

from ..fileio import read_json
from ..runs import run_status
from .files import CONFIG_NAME, WEIGHTS_NAME, CheckpointError, load_checkpoint, read_config, read_metadata

__all__ = ['ModelSource', 'resolve', 'load_model', 'build_from_config', 'load_pretrained', 'load_robustness',
           'SOURCE_KINDS']

SOURCE_KINDS = ('folder', 'tag', 'hf-hub', 'checkpoint')


@dataclass
class ModelSource:
    """A resolved source: what it is, its local weights file and what is recorded of how it was trained."""
    kind: str                               # one of SOURCE_KINDS
    name: str                               # as given
    label: str                              # the evaluation's column name
    weights: Path                           # the local safetensors file (a Hub file: in the Hub cache)
    folder: Optional[Path] = None           # a local run / checkpoint folder (the evaluation records into it)
    config: Dict[str, Any] = field(default_factory=dict)
    recipe: Dict[str, Any] = field(default_factory=dict)
    metadata: Dict[str, str] = field(default_factory=dict)

    def info(self) -> Dict[str, Any]:
        """What the evaluation keeps beside the model (label, recipe, metadata, the folder it may record into)."""
        return {'label': self.label, 'recipe': self.recipe, 'metadata': self.metadata, 'folder': self.folder,
                'source': self.kind}


def build_from_config(config: Dict[str, Any], where: Path, **kwargs: Any) -> nn.Module:
    """The architecture a validated config names, with its recorded arguments (``kwargs`` override them); an
    argument the architecture refuses is a one-line error naming the file."""
    args = {**config.get('model_args', {}), **kwargs}
    try:
        return timm.create_model(config['architecture'], pretrained=False, **args,
                                 pretrained_cfg_overlay=config.get('pretrained_cfg', {}))
    except (TypeError, ValueError, RuntimeError, KeyError) as e:
        raise CheckpointError(f'{Path(where) / CONFIG_NAME}: model_args {config.get("model_args", {})} do not build a '
                              f'{config["architecture"]}: {str(e).splitlines()[0]}') from None


def load_pretrained(folder: Path, **kwargs: Any) -> nn.Module:
    """A folder's model with its weights (``config.json`` validated, every tensor shape checked)."""
    return load_checkpoint(build_from_config(read_config(folder), folder, **kwargs), folder)


# ---- resolving ----------------------------------------------------------------------------------------------------
def _unfinished(folder: Path) -> None:
    status = run_status(folder)
    if status and status.startswith('an unfinished') and not (folder / WEIGHTS_NAME).is_file():
        raise CheckpointError(f'{folder} holds {status}: there are no final weights to evaluate. Finish it with '
                              f'timm-lipschitz train --recipe {folder / "recipe.yaml"} --resume.')


def _from_folder(name: str, folder: Path) -> ModelSource:
    _unfinished(folder)
    config = read_config(folder)
    recipe: Dict[str, Any] = {}
    if (folder / 'recipe.yaml').is_file():
        try:
            recipe = yaml.safe_load((folder / 'recipe.yaml').read_text())
        except yaml.YAMLError as e:
            raise CheckpointError(f'{folder / "recipe.yaml"} is not readable YAML: {str(e).splitlines()[0]}') from None
        if not isinstance(recipe, dict):
            raise CheckpointError(f'{folder / "recipe.yaml"} holds a {type(recipe).__name__}, not a recipe.')
    return ModelSource('folder', name, recipe.get('name') or folder.name, folder / WEIGHTS_NAME, folder, config,
                       recipe, read_metadata(folder))


def _from_tag(name: str) -> ModelSource:
    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None or not (cfg.file or cfg.hf_hub_id):
        arch = name.split('.')[0]
        raise CheckpointError(f'{name!r} has no pretrained weights; registered tags with weights: '
                              f'{timm.list_pretrained(arch + "*") if timm.is_model(arch) else []}.')
    weights = Path(cfg.file) if cfg.file else Path(hf_hub_download(cfg.hf_hub_id, WEIGHTS_NAME))
    return ModelSource('tag', name, name, weights, metadata=read_metadata(weights))


def _from_hub(name: str) -> ModelSource:
    repo = name[len('hf-hub:'):]
    weights = Path(hf_hub_download(repo, WEIGHTS_NAME))
    config = read_json(Path(hf_hub_download(repo, CONFIG_NAME)))
    return ModelSource('hf-hub', name, repo.split('/')[-1], weights, config=config, metadata=read_metadata(weights))


def _num_classes_of(checkpoint: Path, model_name: str) -> int:
    """The class count a checkpoint file was saved with: its metadata, else its classifier's weight."""
    meta = read_metadata(checkpoint)
    if meta.get('num_classes'):
        return int(meta['num_classes'])
    classifier = getattr(timm.models.get_pretrained_cfg(model_name), 'classifier', None) or 'fc'
    with safe_open(str(checkpoint), framework='pt') as f:
        if f'{classifier}.weight' in f.keys():
            return int(f.get_slice(f'{classifier}.weight').get_shape()[0])
    raise CheckpointError(f'--checkpoint {checkpoint}: its class count is recorded nowhere (no num_classes metadata, '
                          f'no {classifier}.weight); save it with timm_lipschitz.hub.save_pretrained.')


def resolve(source: Optional[str] = None, model_name: Optional[str] = None, checkpoint: Optional[str] = None,
            pretrained: bool = False) -> ModelSource:
    """Where a model comes from (module doc), without building it. ``source`` is a folder, ``local-dir:<folder>``,
    a tag, ``hf-hub:<repo>`` or a safetensors file beside its ``config.json``; or give ``model_name`` with
    ``checkpoint`` (a safetensors file) or ``pretrained`` (its registered tag)."""
    if source is None:
        if model_name is None:
            raise CheckpointError('give a run/checkpoint folder, a tag, hf-hub:<repo>, or --model NAME with '
                                  '--checkpoint PATH or --pretrained.')
        if checkpoint is not None:
            path = Path(checkpoint)
            if not path.is_file():
                raise CheckpointError(f'--checkpoint {checkpoint} does not exist.')
            config = read_config(path.parent) if (path.parent / CONFIG_NAME).is_file() else {}
            return ModelSource('checkpoint', str(checkpoint), path.stem if path.stem != 'model' else model_name,
                               path, None, config, {}, read_metadata(path))
        if pretrained:
            return _from_tag(model_name)
        raise CheckpointError(f'--model {model_name} needs --checkpoint PATH or --pretrained.')
    source = str(source)
    if source.startswith('hf-hub:'):
        return _from_hub(source)
    path = Path(source[len('local-dir:'):] if source.startswith('local-dir:') else source)
    if path.is_dir():
        return _from_folder(source, path)
    if path.is_file() and (path.parent / CONFIG_NAME).is_file():
        return _from_folder(source, path.parent)
    if path.is_file():  # a bare weights file: its metadata is readable; building it needs --model
        return ModelSource('checkpoint', source, path.stem, path, metadata=read_metadata(path))
    if '.' in source and not path.exists() and timm.is_model(source.split('.')[0]):
        return _from_tag(source)
    raise CheckpointError(f'{source} is neither a run or checkpoint folder, a registered tag with weights '
                          f'(e.g. cifar_resnet20.lipschitz_hinge_s050_b1_l001_digits), nor hf-hub:<repo>.')


def load_model(source: Optional[str] = None, model_name: Optional[str] = None, checkpoint: Optional[str] = None,
               pretrained: bool = False) -> Tuple[nn.Module, Dict[str, Any]]:
    """The model of a source (:func:`resolve`'s arguments) and what is known of how it was trained."""
    src = resolve(source, model_name, checkpoint, pretrained)
    if src.kind == 'folder':
        model = load_pretrained(src.folder)
    elif src.kind == 'checkpoint':
        if model_name is None:
            raise CheckpointError(f'{src.name} is a weights file without a {CONFIG_NAME} beside it: give --model NAME '
                                  f'--checkpoint {src.name}.')
        args = {k: v for k, v in src.config.get('model_args', {}).items() if k != 'num_classes'}
        try:
            classes = _num_classes_of(src.weights, model_name)
            model = timm.create_model(model_name, pretrained=False, num_classes=classes,
                                      **args, pretrained_cfg_overlay=src.config.get('pretrained_cfg', {}))
        except RuntimeError as e:  # timm: an unknown model name
            raise CheckpointError(f'--model {model_name}: {str(e).splitlines()[0]}') from None
        load_checkpoint(model, src.weights)
    else:
        model = timm.create_model(src.name, pretrained=True)
    return model, src.info()


def load_robustness(source: Any) -> Dict[str, Any]:
    """Robustness scores and training facts of any source, from its weights' metadata (no model is built)."""
    src = resolve(str(source))
    meta = src.metadata
    if 'robustness' not in meta:
        raise CheckpointError(f'{source} has no timm-lipschitz metadata (missing "robustness"); it was not '
                              f'written by timm_lipschitz.hub.save_pretrained.')
    out: Dict[str, Any] = {k: v for k, v in meta.items() if k not in ('robustness', 'hparams')}
    out['hparams'] = json.loads(meta.get('hparams', '{}'))
    out.update(json.loads(meta['robustness']))
    return out


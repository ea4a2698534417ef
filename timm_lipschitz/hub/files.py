"""Checkpoint files: safetensors weights whose metadata carries the robustness scores, timm's config.json and a
model card, written atomically; reading them back through timm's own loaders or without loading any weight.

Layout of a checkpoint folder (what timm's ``local-dir:`` and ``hf-hub:`` loaders read)::

    model.safetensors   weights + string metadata (format_version, architecture, tag, dataset, objective, hparams,
                        recipe hash, package version, robustness summary)
    config.json         timm's export config (architecture, num_classes, num_features, model_args, pretrained_cfg)
    robustness.json     the full sigma sweep (and certificates where computed)
    README.md           model card (timm front matter, robustness table, plot, usage and reproduce commands)

``format_version`` 2 is this layout; files without it were written by timm-lipschitz 0.1.0 (format 1) and load
the same way.
"""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any, Dict, Optional, Union

import timm
import torch.nn as nn
import yaml
from safetensors import safe_open
from safetensors.torch import load_file, save as st_save
from timm.models._hub import save_config_for_hf

from .. import __version__
from ..certificates import DETERMINISTIC_KEY, summary_record
from ..errors import UsageError
from ..fileio import atomic_write_bytes, atomic_write_json, atomic_write_text, dumps, read_json
from ..folders import CONFIG_NAME
from ..normalization import unwrap_model
from ..protocol import SUMMARY_KEYS, by_radius
from ..robustness.corruptions import corruption_names
from ..runs import finished_summary
from .card import render_card

__all__ = ['save_pretrained', 'read_metadata', 'load_checkpoint', 'recipe_hash', 'CheckpointError', 'WEIGHTS_NAME',
           'FORMAT_VERSION', 'record_evaluation', 'parameter_count', 'read_config', 'CONFIG_NAME']

FORMAT_VERSION = 2
WEIGHTS_NAME = 'model.safetensors'
_REMOTE = ('hf-hub:', 'local-dir:', 'http:', 'https:')


class CheckpointError(UsageError):
    """A checkpoint is unreadable or does not fit the model; the message names the file and the mismatch."""


def recipe_hash(recipe: Optional[Dict[str, Any]]) -> str:
    """sha256 (first 16 hex) of the resolved recipe, keys sorted: the same recipe always gives the same hash."""
    if not recipe:
        return ''
    return hashlib.sha256(json.dumps(recipe, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ---- writing ---------------------------------------------------------------------------------------------------
def _robustness_summary(record: Dict[str, Any]) -> Dict[str, Any]:
    """What the metadata carries of ``robustness.json``: the noise sweep's table columns and grid, the mean
    corruption accuracy, the robust accuracy at each attack's reported epsilon, certificates."""
    out: Dict[str, Any] = {}
    robustness = record.get('robustness')
    if robustness:
        summary = robustness.get('summary', {})
        out.update({k: summary.get(k) for k in SUMMARY_KEYS})
        out['sigmas'] = [robustness['sigmas'][0], robustness['sigmas'][-1], len(robustness['sigmas'])]
        out['repeats'] = robustness.get('repeats')
        out['num_images'] = robustness.get('num_images')
    if record.get('certified'):
        out['certified'] = record['certified']
    corruptions = record.get('corruptions')
    if corruptions:
        out['corruption_mean'] = corruptions['mean']
        out['corruption_images'] = corruptions['num_images']
        out['corruption_severities'] = list(corruptions['severities'])
        out['corruption_names'] = corruption_names(corruptions)  # what the mean is over
        out.update(_protocol_summary('corruption', corruptions))
    smooth = record.get('smoothing')
    if smooth:
        out['smoothing'] = {'sigma': smooth['sigma'], 'n': smooth['n'], 'alpha': smooth['alpha'],
                            'num_images': smooth['num_images'],
                            'certified': by_radius(smooth['radii'], smooth['certified_accuracy'])}
        same = smooth.get('deterministic_same_images')
        if same:  # the deterministic certificate on smoothing's own images: the comparison a reader can trust
            out['smoothing']['deterministic_same_images'] = by_radius(smooth['radii'], same)
    cert = record.get(DETERMINISTIC_KEY)
    if cert:
        out[DETERMINISTIC_KEY] = summary_record(cert)
        out.update(_protocol_summary(DETERMINISTIC_KEY, cert))
    attacks = record.get('attacks')
    if attacks:
        out.update(attacks.get('reported', {}))
        out['attack_images'] = attacks.get('num_images')
        out.update(_protocol_summary('attack', attacks))
    return out


def _protocol_summary(prefix: str, result: Dict[str, Any]) -> Dict[str, Any]:
    """The split a recorded result was measured on and whether it follows the full protocol (results recorded
    before this was stated say nothing of it)."""
    protocol = result.get('protocol')
    if not protocol:
        return {}
    return {f'{prefix}_split': protocol['split'], f'{prefix}_full_protocol': protocol['full_protocol']}


def save_pretrained(model: nn.Module, folder: Union[str, Path], *, tag: Optional[str] = None,
                    dataset: Optional[str] = None, objective: Optional[str] = None,
                    hparams: Optional[Dict[str, Any]] = None, recipe: Optional[Dict[str, Any]] = None,
                    robustness: Optional[Dict[str, Any]] = None, certified: Optional[Dict[str, Any]] = None,
                    command: Optional[str] = None, plot: Optional[str] = None,
                    load_as: Optional[str] = None) -> Path:
    """Write ``model.safetensors`` (with metadata), ``config.json``, ``robustness.json`` and ``README.md``.

    Every file is written atomically. ``robustness`` is a :class:`~timm_lipschitz.robustness.SweepResult` dict.
    ``load_as`` is what the card's usage line passes to ``timm.create_model`` (default ``local-dir:`` and the
    folder's absolute path, so the line works from any directory; a published card names its ``hf-hub:`` repo).
    """
    model = unwrap_model(model)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    arch = model.pretrained_cfg.get('architecture', type(model).__name__)
    record = {'robustness': robustness, 'certified': certified}  # robustness.json; the metadata and card read it
    meta = {
        'format': 'pt', 'format_version': str(FORMAT_VERSION), 'architecture': arch, 'tag': tag or '', 'dataset': dataset or '',
        'objective': objective or '', 'hparams': json.dumps(hparams or {}, sort_keys=True, default=str),
        'recipe_hash': recipe_hash(recipe), 'version': __version__,
        'num_classes': str(model.num_classes),
        'robustness': dumps(_robustness_summary(record), default=str),
    }
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    atomic_write_bytes(folder / WEIGHTS_NAME, st_save(tensors, metadata=meta))
    tmp_cfg = folder / f'.{CONFIG_NAME}.tmp'
    save_config_for_hf(model, tmp_cfg, model_config={
        'timm_lipschitz': {k: meta[k] for k in ('format_version', 'tag', 'dataset', 'objective', 'version',
                                                  'recipe_hash')}})
    tmp_cfg.replace(folder / CONFIG_NAME)
    config = read_config(folder)
    if robustness:
        atomic_write_json(folder / 'robustness.json', record)
    if recipe:
        atomic_write_text(folder / 'recipe.yaml', yaml.safe_dump(recipe, sort_keys=False))
    name = f'{arch}.{tag}' if tag else arch
    atomic_write_text(folder / 'README.md', render_card(name, config, meta, record, command, plot,
                                                        load_as or f'local-dir:{folder.resolve()}',
                                                        parameter_count(folder)))
    return folder


def record_evaluation(folder: Union[str, Path], load_as: Optional[str] = None, command: Optional[str] = None,
                      **results: Any) -> Path:
    """Add evaluation results (``corruptions=...``, ``attacks=...``) to a checkpoint or run folder: into
    ``robustness.json``, the safetensors metadata's summary (the weights rewritten unchanged, atomically) and the
    model card, so the folder's own files report them. ``load_as``/``command``: the card's usage and reproduce
    lines (default: ``local-dir:<folder>`` and the run's ``final.json`` command)."""
    folder = Path(folder)
    record_file = folder / 'robustness.json'
    record = read_json(record_file) if record_file.is_file() else {}
    record.update({k: v for k, v in results.items() if v is not None})
    atomic_write_json(record_file, record)
    meta = read_metadata(folder)
    meta['robustness'] = dumps({**json.loads(meta.get('robustness', '{}')), **_robustness_summary(record)},
                                    default=str)
    atomic_write_bytes(folder / WEIGHTS_NAME, st_save(load_file(str(folder / WEIGHTS_NAME)), metadata=meta))
    config = read_config(folder)
    final = finished_summary(folder) or {}
    name = f"{meta.get('architecture')}.{meta['tag']}" if meta.get('tag') else str(meta.get('architecture'))
    plot = 'robustness.png' if (folder / 'robustness.png').is_file() else None
    card = render_card(name, config, meta, record, command or final.get('command'), plot,
                       load_as or f'local-dir:{folder.resolve()}', parameter_count(folder))
    atomic_write_text(folder / 'README.md', card)
    return folder


# ---- reading ---------------------------------------------------------------------------------------------------
BUFFER_SUFFIXES = ('running_mean', 'running_var', 'num_batches_tracked')


def parameter_count(source: Union[str, Path]) -> int:
    """Learnable parameters in a checkpoint, from the tensor shapes of its header (BatchNorm statistics left out)."""
    with safe_open(str(_weights_file(source)), framework='pt') as f:
        return sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys() if not k.endswith(BUFFER_SUFFIXES))


def _weights_file(source: Union[str, Path]) -> Path:
    path = Path(source)
    if path.is_dir():
        path = path / WEIGHTS_NAME
    if not path.is_file():
        raise CheckpointError(f'checkpoint file {path} does not exist.')
    return path


def read_metadata(source: Union[str, Path]) -> Dict[str, str]:
    """The string metadata of a safetensors file (or folder holding one), without loading any tensor."""
    path = _weights_file(source)
    try:
        with safe_open(str(path), framework='pt') as f:
            meta = f.metadata() or {}
    except Exception as e:  # safetensors raises its own error types for corrupt/truncated headers
        raise CheckpointError(f'{path} is not a readable safetensors file (corrupt or truncated): {e}') from e
    return dict(meta)


def load_checkpoint(model: nn.Module, source: Union[str, Path]) -> nn.Module:
    """Load a checkpoint into ``model`` after checking architecture, class count and every tensor shape."""
    path = _weights_file(source)
    meta = read_metadata(path)
    model_u = unwrap_model(model)
    arch = model_u.pretrained_cfg.get('architecture') if hasattr(model_u, 'pretrained_cfg') else None
    if meta.get('architecture') and arch and meta['architecture'] != arch:
        raise CheckpointError(f'{path} holds a {meta["architecture"]} but the model is a {arch}.')
    if meta.get('num_classes') and int(meta['num_classes']) != model_u.num_classes:
        raise CheckpointError(f'{path} has {meta["num_classes"]} classes but the model has '
                              f'num_classes={model_u.num_classes}.')
    try:
        state = load_file(str(path))
    except Exception as e:
        raise CheckpointError(f'{path} is not a readable safetensors file (corrupt or truncated): {e}') from e
    own = model_u.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f'{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}'
              for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        raise CheckpointError(f'{path} does not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}, '
                              f'shape mismatches {shapes[:5]}.')
    model_u.load_state_dict(state)
    return model


# ---- config.json: the one reader ----------------------------------------------------------------------------------
def read_config(folder: Path) -> Dict[str, Any]:
    """A folder's ``config.json``, validated: a mapping whose ``architecture`` is a registered architecture (never a
    remote reference), whose ``model_args`` and ``pretrained_cfg`` are mappings and whose ``num_classes`` is a
    count. Each fault is a one-line :class:`~timm_lipschitz.hub.CheckpointError` naming the file and the field."""
    path = Path(folder) / CONFIG_NAME
    if not path.is_file():
        raise CheckpointError(f'{folder} has no {CONFIG_NAME}; expected a folder written by save_pretrained '
                              f'(timm-lipschitz train, publish, convert).')
    try:
        config = read_json(path)
    except Exception as e:  # not JSON, unreadable
        raise CheckpointError(f'{path} is not readable JSON: {str(e).splitlines()[0]}') from None
    if not isinstance(config, dict):
        raise CheckpointError(f'{path} holds a {type(config).__name__}, not a mapping of timm config fields.')
    arch = config.get('architecture')
    if not isinstance(arch, str) or not arch:
        raise CheckpointError(f'{path}: architecture={arch!r} is not allowed; give the name of a registered timm '
                              f'architecture (e.g. cifar_resnet20).')
    if arch.startswith(_REMOTE):
        raise CheckpointError(f'{path}: architecture={arch!r} points elsewhere; a local folder must name a registered '
                              f'architecture itself (it is never resolved over the network).')
    if not timm.is_model(arch):
        raise CheckpointError(f'{path}: architecture={arch!r} is not a registered timm architecture '
                              f'(import the package that registers it; this one registers '
                              f'{", ".join(timm.list_models(module="cifar_resnet")[:2])}, ...).')
    for key in ('model_args', 'pretrained_cfg'):
        if not isinstance(config.get(key, {}), dict):
            raise CheckpointError(f'{path}: {key}={config[key]!r} is not allowed; give a mapping.')
    if any(not isinstance(k, str) for k in config.get('model_args', {})):
        raise CheckpointError(f'{path}: model_args keys must be argument names.')
    classes = config.get('num_classes', 0)
    if isinstance(classes, bool) or not isinstance(classes, int) or classes < 0:
        raise CheckpointError(f'{path}: num_classes={classes!r} is not allowed; give an integer >= 0.')
    return config

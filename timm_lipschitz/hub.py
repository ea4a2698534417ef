"""Robust checkpoints: safetensors weights whose metadata carries the robustness scores, timm's config.json, a model
card; loading through timm's own mechanisms; publishing to the Hugging Face Hub; converters for other projects'
CIFAR ResNet checkpoints.

Layout of a checkpoint folder (what timm's ``local-dir:`` and ``hf-hub:`` loaders read)::

    model.safetensors   weights + string metadata (architecture, tag, dataset, objective, hparams, recipe hash,
                        package version, robustness summary)
    config.json         timm's export config (architecture, num_classes, num_features, model_args, pretrained_cfg)
    robustness.json     the full sigma sweep (and certificates where computed)
    README.md           model card (timm front matter, robustness table, plot, reproduce command)
"""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

import torch
import torch.nn as nn

from .fileio import atomic_write_bytes, atomic_write_json, atomic_write_text, read_json
from .normalization import unwrap_model

__all__ = ['save_pretrained', 'read_metadata', 'load_robustness', 'load_checkpoint', 'load_pretrained',
           'publish', 'place_in_cache', 'ship_pretrained', 'convert_checkpoint', 'make_tag', 'recipe_hash',
           'CheckpointError', 'WEIGHTS_NAME']

WEIGHTS_NAME = 'model.safetensors'
_SUMMARY_KEYS = ('acc@0', 'acc@0.3', 'acc@0.5', 'grid_mean')


class CheckpointError(ValueError):
    """A checkpoint is unreadable or does not fit the model; the message names the file and the mismatch."""


# ---- names -----------------------------------------------------------------------------------------------------
def _num(v: float) -> str:
    """Numbers in tags are written without the dot: 0.5 -> '050', 0.01 -> '001', 10 -> '10', 0.005 -> '0005'."""
    v = float(v)
    if v == int(v) and v >= 1:
        return str(int(v))
    s = f'{v:.6f}'.rstrip('0')
    whole, frac = s.split('.')
    return whole + (frac if len(frac) >= 2 else frac.ljust(2, '0'))


DATASET_TAGS = {'fashion_mnist': 'fmnist', 'mnist_5k': 'mnist5k', 'digits': 'digits', 'mnist': 'mnist',
                'cifar10': 'c10', 'cifar100': 'c100', 'stl10': 'stl10'}


def make_tag(objective: str, hparams: Dict[str, Any], dataset: str) -> str:
    """``<objective>_<setting>_<dataset>``, e.g. ``lipschitz_hinge_s050_b1_l001_fmnist`` (see the README)."""
    setting = []
    if 'sigma' in hparams:
        setting.append('s' + _num(hparams['sigma']))
    if objective == 'lipschitz_hinge':
        setting += ['b' + _num(hparams['beta']), 'l' + _num(hparams['lipschitz_target'])]
        if hparams.get('output', 'logits') != 'logits':
            setting.append(hparams['output'])
    elif objective == 'stability':
        setting.append('a' + _num(hparams['alpha']))
    elif objective == 'consistency':
        setting += ['m' + str(hparams['num_noise']), 'w' + _num(hparams['consistency_weight'])]
    ds = DATASET_TAGS.get(dataset, re.sub(r'[^a-z0-9]+', '', dataset.lower()))
    return '_'.join([objective, *setting, ds]) if setting else f'{objective}_{ds}'


def recipe_hash(recipe: Optional[Dict[str, Any]]) -> str:
    """sha256 (first 16 hex) of the resolved recipe, keys sorted: the same recipe always gives the same hash."""
    if not recipe:
        return ''
    return hashlib.sha256(json.dumps(recipe, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ---- writing ---------------------------------------------------------------------------------------------------
def _robustness_summary(robustness: Optional[Dict[str, Any]], certified: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    if robustness:
        summary = robustness.get('summary', {})
        out.update({k: summary.get(k) for k in _SUMMARY_KEYS})
        out['sigmas'] = [robustness['sigmas'][0], robustness['sigmas'][-1], len(robustness['sigmas'])]
        out['repeats'] = robustness.get('repeats')
        out['num_images'] = robustness.get('num_images')
    if certified:
        out['certified'] = certified
    return out


def _card(name: str, config: Dict[str, Any], meta: Dict[str, str], robustness: Optional[Dict[str, Any]],
          command: Optional[str], plot: Optional[str]) -> str:
    dataset = meta.get('dataset', '')
    hp = json.loads(meta.get('hparams', '{}'))
    lines = [
        '---',
        'tags:', '- image-classification', '- timm', '- timm-lipschitz', '- noise-robustness',
        'library_name: timm',
        f"license: {config.get('pretrained_cfg', {}).get('license', 'apache-2.0')}",
    ]
    if dataset:
        lines += ['datasets:', f'- {dataset}']
    lines += ['---', '', f'# Model card for {name}', '',
              f"A `{meta.get('architecture')}` image classifier trained on `{dataset}` with the "
              f"`{meta.get('objective')}` objective of timm-lipschitz "
              f"(Usama & Chang, *Towards Robust Neural Networks with Lipschitz Continuity*).", '',
              '## Model details', '',
              f"- **Architecture:** {meta.get('architecture')} ({config.get('num_classes')} classes, input "
              f"{tuple(config.get('pretrained_cfg', {}).get('input_size', ()))})",
              f"- **Objective:** {meta.get('objective')} {hp}",
              f"- **Recipe hash:** {meta.get('recipe_hash') or 'n/a'}; timm-lipschitz {meta.get('version')}", '',
              '## Usage', '', '```python', 'import timm, timm_lipschitz',
              f"model = timm.create_model('{name}', pretrained=True)" if '.' in name else
              "model = timm.create_model('local-dir:<this folder>')",
              'model.eval()  # inputs: [0,1] pixels normalized with pretrained_cfg mean/std', '```', '']
    if robustness:
        s = robustness.get('summary', {})
        lines += ['## Accuracy under additive Gaussian noise', '',
                  f"Test accuracy (%) with noise N(0, sigma^2) added per pixel in [0,1] space before "
                  f"normalization, {robustness.get('repeats')} draw(s) per image, {robustness.get('num_images')} "
                  f"test images, grid {robustness['sigmas'][0]:g}..{robustness['sigmas'][-1]:g} "
                  f"({len(robustness['sigmas'])} levels).", '',
                  '| sigma_test | accuracy | std over draws |', '|---|---|---|']
        step = max(1, len(robustness['sigmas']) // 10)
        for i, (sg, a, sd) in enumerate(zip(robustness['sigmas'], robustness['accuracy'],
                                            robustness['accuracy_std'])):
            if i % step == 0 or i == len(robustness['sigmas']) - 1 or any(abs(sg - t) < 1e-9 for t in (0.3, 0.5)):
                lines.append(f'| {sg:.2f} | {a:.2f} | {sd:.2f} |')
        lines += ['', '| clean | sigma 0.3 | sigma 0.5 | grid mean |', '|---|---|---|---|',
                  '| ' + ' | '.join('n/a' if s.get(k) is None else f'{s[k]:.2f}' for k in _SUMMARY_KEYS) + ' |', '']
    if plot:
        lines += [f'![accuracy vs sigma]({plot})', '']
    if command:
        lines += ['## Reproduce', '', '```bash', command, '```', '']
    return '\n'.join(lines)


def save_pretrained(model: nn.Module, folder: Union[str, Path], *, tag: Optional[str] = None,
                    dataset: Optional[str] = None, objective: Optional[str] = None,
                    hparams: Optional[Dict[str, Any]] = None, recipe: Optional[Dict[str, Any]] = None,
                    robustness: Optional[Dict[str, Any]] = None, certified: Optional[Dict[str, Any]] = None,
                    command: Optional[str] = None, plot: Optional[str] = None) -> Path:
    """Write ``model.safetensors`` (with metadata), ``config.json``, ``robustness.json`` and ``README.md``.

    Every file is written atomically. ``robustness`` is a :class:`~timm_lipschitz.robustness.SweepResult` dict.
    """
    from safetensors.torch import save as st_save
    from timm.models._hub import save_config_for_hf

    from . import __version__
    model = unwrap_model(model)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    arch = model.pretrained_cfg.get('architecture', type(model).__name__)
    meta = {
        'format': 'pt', 'architecture': arch, 'tag': tag or '', 'dataset': dataset or '',
        'objective': objective or '', 'hparams': json.dumps(hparams or {}, sort_keys=True, default=str),
        'recipe_hash': recipe_hash(recipe), 'version': __version__,
        'num_classes': str(model.num_classes),
        'robustness': json.dumps(_robustness_summary(robustness, certified), default=str),
    }
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    atomic_write_bytes(folder / WEIGHTS_NAME, st_save(tensors, metadata=meta))
    tmp_cfg = folder / '.config.json.tmp'
    save_config_for_hf(model, tmp_cfg, model_config={
        'timm_lipschitz': {k: meta[k] for k in ('tag', 'dataset', 'objective', 'version', 'recipe_hash')}})
    config = read_json(tmp_cfg)
    tmp_cfg.replace(folder / 'config.json')
    if robustness:
        atomic_write_json(folder / 'robustness.json', {'robustness': robustness, 'certified': certified})
    if recipe:
        import yaml
        atomic_write_text(folder / 'recipe.yaml', yaml.safe_dump(recipe, sort_keys=False))
    name = f'{arch}.{tag}' if tag else arch
    atomic_write_text(folder / 'README.md', _card(name, config, meta, robustness, command, plot))
    return folder


# ---- reading ---------------------------------------------------------------------------------------------------
def _weights_file(source: Union[str, Path]) -> Path:
    path = Path(source)
    if path.is_dir():
        path = path / WEIGHTS_NAME
    if not path.is_file():
        raise CheckpointError(f'checkpoint file {path} does not exist.')
    return path


def read_metadata(source: Union[str, Path]) -> Dict[str, str]:
    """The string metadata of a safetensors file (or folder holding one), without loading any tensor."""
    from safetensors import safe_open
    path = _weights_file(source)
    try:
        with safe_open(str(path), framework='pt') as f:
            meta = f.metadata() or {}
    except Exception as e:  # safetensors raises its own error types for corrupt/truncated headers
        raise CheckpointError(f'{path} is not a readable safetensors file (corrupt or truncated): {e}') from e
    return dict(meta)


def _resolve_source(source: str) -> Path:
    """A file/folder path, ``hf-hub:<repo>`` (header only, via the hub cache), or a registered ``arch.tag``."""
    if source.startswith('hf-hub:'):
        from huggingface_hub import hf_hub_download
        return Path(hf_hub_download(source[len('hf-hub:'):], WEIGHTS_NAME))
    path = Path(source)
    if path.exists():
        return path
    import timm
    if '.' in source and timm.is_model(source.split('.')[0]):
        cfg = timm.models.get_pretrained_cfg(source)
        if cfg is not None and cfg.file:
            return Path(cfg.file)
        if cfg is not None and cfg.hf_hub_id:
            return _resolve_source('hf-hub:' + cfg.hf_hub_id)
    raise CheckpointError(f'{source!r} is neither a checkpoint file/folder, an hf-hub: id, nor a registered '
                          f'pretrained tag with weights.')


def load_robustness(source: Union[str, Path]) -> Dict[str, Any]:
    """Robustness scores and training facts of a checkpoint, read from its metadata (no weights are loaded)."""
    meta = read_metadata(_resolve_source(str(source)))
    if 'robustness' not in meta:
        raise CheckpointError(f'{source} has no timm-lipschitz metadata (missing "robustness"); it was not '
                              f'written by timm_lipschitz.hub.save_pretrained.')
    out: Dict[str, Any] = {k: v for k, v in meta.items() if k not in ('robustness', 'hparams')}
    out['hparams'] = json.loads(meta.get('hparams', '{}'))
    out.update(json.loads(meta['robustness']))
    return out


def load_checkpoint(model: nn.Module, source: Union[str, Path]) -> nn.Module:
    """Load a checkpoint into ``model`` after checking architecture, class count and every tensor shape."""
    from safetensors.torch import load_file
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


def load_pretrained(folder: Union[str, Path], **kwargs: Any) -> nn.Module:
    """``timm.create_model('local-dir:<folder>')`` with this package's checks and clear errors."""
    import timm
    folder = Path(folder)
    if not (folder / 'config.json').is_file():
        raise CheckpointError(f'{folder} has no config.json; expected a folder written by save_pretrained.')
    config = read_json(folder / 'config.json')
    model = timm.create_model(config['architecture'], pretrained=False,
                              **{**config.get('model_args', {}), **kwargs},
                              pretrained_cfg_overlay=config.get('pretrained_cfg', {}))
    return load_checkpoint(model, folder)


# ---- publishing ------------------------------------------------------------------------------------------------
def publish(run_dir: Union[str, Path], repo_id: str, dry_run: bool = False, out_dir: Optional[Union[str, Path]] = None,
            private: bool = False) -> Path:
    """Build the hub folder of a finished training run and upload it (``dry_run``: build only)."""
    run_dir = Path(run_dir)
    if not (run_dir / 'final.json').is_file():
        raise CheckpointError(f'{run_dir} is not a finished training run (no final.json).')
    model = load_pretrained(run_dir)
    meta = read_metadata(run_dir)
    rob_file = run_dir / 'robustness.json'
    rob = read_json(rob_file) if rob_file.is_file() else {}
    recipe = None
    if (run_dir / 'recipe.yaml').is_file():
        import yaml
        recipe = yaml.safe_load((run_dir / 'recipe.yaml').read_text())
    final = read_json(run_dir / 'final.json')
    out = Path(out_dir) if out_dir else run_dir / 'publish'
    plot = None
    for png in run_dir.glob('*.png'):
        atomic_write_bytes(out / png.name, png.read_bytes())
        plot = plot or png.name
    save_pretrained(model, out, tag=meta.get('tag') or None, dataset=meta.get('dataset') or None,
                    objective=meta.get('objective') or None, hparams=json.loads(meta.get('hparams', '{}')),
                    recipe=recipe, robustness=rob.get('robustness'), certified=rob.get('certified'),
                    command=final.get('command'), plot=plot)
    if not dry_run:
        from huggingface_hub import HfApi
        api = HfApi()
        api.create_repo(repo_id, exist_ok=True, private=private)
        api.upload_folder(repo_id=repo_id, folder_path=str(out), commit_message='Upload timm-lipschitz checkpoint')
    return out


def place_in_cache(folder: Union[str, Path], repo_id: str, cache_dir: Optional[Union[str, Path]] = None,
                   revision: str = 'main') -> Path:
    """Copy a checkpoint folder into the Hugging Face cache as ``repo_id``, so ``hf-hub:<repo_id>`` and tags
    naming that ``hf_hub_id`` load offline (``HF_HUB_OFFLINE=1``) exactly as if downloaded."""
    import shutil

    from huggingface_hub import constants
    folder = Path(folder)
    if not (folder / WEIGHTS_NAME).is_file():
        raise CheckpointError(f'{folder} has no {WEIGHTS_NAME} to place in the cache.')
    root = Path(cache_dir or constants.HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}"
    digest = hashlib.sha1()
    for f in sorted(folder.iterdir()):
        if f.is_file():
            digest.update(f.name.encode() + f.read_bytes())
    commit = digest.hexdigest()
    snap = root / 'snapshots' / commit
    snap.mkdir(parents=True, exist_ok=True)
    for f in folder.iterdir():
        if f.is_file():
            shutil.copy2(f, snap / f.name)
    atomic_write_text(root / 'refs' / revision, commit)
    return snap


def ship_pretrained(run_dir: Union[str, Path], weights_dir: Optional[Union[str, Path]] = None) -> str:
    """Copy a finished run's weights into the package (``timm_lipschitz/weights``) and register its tag in
    ``weights/index.json``; returns the model name ``<arch>.<tag>`` (registered on the next import)."""
    import shutil

    from .models._pretrained import INDEX, WEIGHTS_DIR
    run_dir = Path(run_dir)
    if not (run_dir / 'final.json').is_file():
        raise CheckpointError(f'{run_dir} is not a finished training run (no final.json).')
    meta = read_metadata(run_dir)
    config = read_json(run_dir / 'config.json')
    name = f"{meta['architecture']}.{meta['tag']}"
    out_dir = Path(weights_dir) if weights_dir else WEIGHTS_DIR
    index_file = out_dir / INDEX.name
    index = read_json(index_file) if index_file.is_file() else {}
    shutil.copy2(run_dir / WEIGHTS_NAME, out_dir / f'{name}.safetensors')
    pcfg = config.get('pretrained_cfg', {})
    index[name] = {'file': f'{name}.safetensors',
                   'cfg': {k: pcfg[k] for k in ('input_size', 'mean', 'std', 'num_classes', 'label_names',
                                                'pool_size', 'license') if k in pcfg}}
    atomic_write_json(index_file, dict(sorted(index.items())))
    return name


# ---- converters ------------------------------------------------------------------------------------------------
def _load_foreign(path: Path) -> Dict[str, torch.Tensor]:
    try:
        obj = torch.load(str(path), map_location='cpu', weights_only=True)
    except Exception as e:
        raise CheckpointError(f'{path} cannot be read as a weights-only torch checkpoint: {e}') from e
    for key in ('state_dict', 'model', 'net'):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(torch.is_tensor(v) for v in obj.values()):
        raise CheckpointError(f'{path} holds no state dict of tensors.')
    return {re.sub(r'^module\.', '', k): v for k, v in obj.items()}


def _infer_arch(state: Dict[str, torch.Tensor], path: Path) -> Tuple[int, str, int, int]:
    blocks = {int(m.group(1)) for k in state for m in [re.match(r'layer1\.(\d+)\.', k)] if m}
    if not blocks or 'conv1.weight' not in state:
        raise CheckpointError(f'{path} does not look like a CIFAR ResNet (no conv1 / layer1 blocks).')
    depth = 6 * len(blocks) + 2
    shortcut = 'B' if any('downsample' in k or 'shortcut.0' in k for k in state) else 'A'
    fc = state.get('fc.weight', state.get('linear.weight'))
    if fc is None:
        raise CheckpointError(f'{path} has no classifier (fc.weight or linear.weight).')
    return depth, shortcut, fc.shape[0], state['conv1.weight'].shape[1]


def convert_checkpoint(path: Union[str, Path], out_dir: Union[str, Path], source: str = 'auto',
                       dataset: str = 'cifar10') -> Path:
    """Convert akamaster/pytorch_resnet_cifar10 (.th, ``module.`` prefix, option A, ``linear``) or
    chenyaofo/pytorch-cifar-models (option B, ``downsample.0/1``, ``fc``) weights into this package's format.

    Pickles are read only with ``torch.load(weights_only=True)``. The result loads with ``local-dir:``.
    """
    import timm
    path = Path(path)
    state = _load_foreign(path)
    if source not in ('auto', 'akamaster', 'chenyaofo'):
        raise ValueError(f"source={source!r} is not allowed; choose 'auto', 'akamaster' or 'chenyaofo'.")
    state = {k.replace('linear.', 'fc.', 1) if k.startswith('linear.') else k: v for k, v in state.items()}
    state = {re.sub(r'\.shortcut\.', '.downsample.', k): v for k, v in state.items()}
    depth, shortcut, num_classes, in_chans = _infer_arch(state, path)
    model = timm.create_model(f'cifar_resnet{depth}', num_classes=num_classes, in_chans=in_chans,
                              shortcut=shortcut)
    own = model.state_dict()
    state = {k: v for k, v in state.items() if not k.endswith('num_batches_tracked') or k in own}
    for k in own:
        if k.endswith('num_batches_tracked') and k not in state:
            state[k] = own[k]
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        raise CheckpointError(f'{path} does not map onto cifar_resnet{depth} (shortcut {shortcut}): missing '
                              f'{missing[:5]}, unexpected {unexpected[:5]}.')
    model.load_state_dict(state)
    return save_pretrained(model, out_dir, tag=f'converted_{source}', dataset=dataset, objective='external',
                           hparams={'source_file': path.name})

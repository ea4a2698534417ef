"""Sharing checkpoints: publishing a finished run to the Hugging Face Hub, placing a checkpoint in the hub cache for
offline use, and shipping a run's weights inside the package as a registered pretrained tag."""
from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path
from typing import Optional, Union

import yaml
from huggingface_hub import HfApi, constants, get_token

from ..certificates import DETERMINISTIC_KEY
from ..data import DataError, create_dataset, timm_crop_pct
from ..errors import UserError
from ..fileio import atomic_write_bytes, atomic_write_json, atomic_write_text, read_json
from ..folders import MANIFEST_NAME, PRODUCTS, check_output_folder, record_outputs
from ..runs import require_finished
from ..zoo import INDEX, WEIGHTS_DIR
from .files import WEIGHTS_NAME, CheckpointError, read_config, read_metadata, record_evaluation, save_pretrained
from .sources import load_pretrained, resolve

__all__ = ['publish', 'place_in_cache', 'ship_pretrained', 'PublishError']


def publish(run_dir: Union[str, Path], repo_id: str, dry_run: bool = False, out_dir: Optional[Union[str, Path]] = None,
            private: bool = False) -> Path:
    """Build the hub folder of a finished training run and upload it (``dry_run``: build only). A missing token, a
    malformed repo id and a failed upload are one-line errors (:class:`PublishError`); the built folder stays."""
    source = resolve(str(run_dir)) if not Path(run_dir).is_dir() else None
    if source is not None:
        raise CheckpointError(f'publish takes a finished run folder (timm-lipschitz train --output-dir); {run_dir} '
                              f'is a {source.kind}.')
    run_dir = Path(run_dir)
    require_finished(run_dir, CheckpointError)
    run_dir = resolve(str(run_dir)).folder  # its config.json validated
    _check_repo_id(repo_id)
    if not dry_run:
        _require_token()
    model = load_pretrained(run_dir)
    meta = read_metadata(run_dir)
    recipe = _run_recipe(run_dir)
    _restate_preprocessing(model, recipe)
    rob_file = run_dir / 'robustness.json'
    rob = read_json(rob_file) if rob_file.is_file() else {}
    out = check_output_folder(Path(out_dir) if out_dir else run_dir / 'publish', '--out-dir',
                              writes=PRODUCTS['checkpoint'], exclusive=True)  # the whole folder is uploaded
    plot = None
    for png in run_dir.glob('*.png'):
        atomic_write_bytes(out / png.name, png.read_bytes())
        plot = plot or png.name
    command = ('timm-lipschitz train --recipe recipe.yaml --output-dir reproduced   # in a download of this '
               'repository (its recipe.yaml is the run\'s resolved recipe)')
    save_pretrained(model, out, tag=meta.get('tag') or None, dataset=meta.get('dataset') or None,
                    objective=meta.get('objective') or None, hparams=json.loads(meta.get('hparams', '{}')),
                    recipe=recipe, robustness=rob.get('robustness'), certified=rob.get('certified'),
                    command=command, plot=plot, load_as=f'hf-hub:{repo_id}')
    extra = {k: rob[k] for k in ('corruptions', 'attacks', DETERMINISTIC_KEY) if rob.get(k)}
    if extra:  # what was evaluated after training reaches the published card and metadata too
        record_evaluation(out, load_as=f'hf-hub:{repo_id}', command=command, **extra)
    record_outputs(out, [p.name for p in out.iterdir() if p.name != MANIFEST_NAME], 'timm-lipschitz publish')
    if not dry_run:
        _upload(out, repo_id, private)
    return out


def training_crop_pct(pretrained_cfg: dict, recipe: Optional[dict]) -> Optional[float]:
    """The ``crop_pct`` with which timm's eval transform pads as the run's training did (from its data's native
    size): a run recorded before its cfg held ``crop_pct`` (0.2.0) says 1.0 even where training zero-padded. None
    when the data is not readable here (said)."""
    data = (recipe or {}).get('data') or {}
    if not data.get('name'):
        return None
    try:
        _, info = create_dataset(data['name'], 'test', root=data.get('root'), **(data.get('kwargs') or {}))
    except (DataError, OSError, TypeError) as e:
        print(f"note: {data['name']} is not readable here ({str(e).splitlines()[0]}); the cfg keeps crop_pct "
              f"{pretrained_cfg.get('crop_pct')}, check it reproduces the training inputs.")
        return None
    return timm_crop_pct(info.native_size, pretrained_cfg['input_size'])


def _restate_preprocessing(model, recipe: Optional[dict]) -> None:
    """Publish the preprocessing that reproduces the scores (:func:`training_crop_pct`) in the config and card."""
    crop = training_crop_pct(model.pretrained_cfg, recipe)
    if crop is not None and crop != model.pretrained_cfg.get('crop_pct'):
        model.pretrained_cfg = model.default_cfg = {**model.pretrained_cfg, 'crop_pct': crop}


def _run_recipe(run_dir: Path) -> Optional[dict]:
    """The run's resolved recipe (``recipe.yaml``), or None for a folder without one."""
    if not (run_dir / 'recipe.yaml').is_file():
        return None
    return yaml.safe_load((run_dir / 'recipe.yaml').read_text()) or {}


class PublishError(UserError):
    """Publishing to the Hub cannot go on: no token, a malformed repo id, or the upload failed (network, rights)."""


def _check_repo_id(repo_id: str) -> None:
    if not re.fullmatch(r'[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*', str(repo_id)):
        raise PublishError(f'--repo-id {repo_id!r} is not ORG/NAME (letters, digits, -, _ and .).')


def _require_token() -> None:
    if not get_token():
        raise PublishError('no Hugging Face token: log in with `huggingface-cli login` or set HF_TOKEN, or build the '
                           'folder only with --dry-run.')


def _upload(out: Path, repo_id: str, private: bool) -> None:
    try:
        api = HfApi()
        api.create_repo(repo_id, exist_ok=True, private=private)
        api.upload_folder(repo_id=repo_id, folder_path=str(out), commit_message='Upload timm-lipschitz checkpoint',
                          ignore_patterns=[MANIFEST_NAME])
    except Exception as e:  # network, token rights, the Hub's answer: one line, the built folder stays
        first = (str(e).strip().splitlines() or [''])[0][:300]
        raise PublishError(f'could not upload to {repo_id}: {type(e).__name__}: {first}. The folder is built in '
                           f'{out}; upload it later (huggingface-cli upload {repo_id} {out}).') from e


def place_in_cache(folder: Union[str, Path], repo_id: str, cache_dir: Optional[Union[str, Path]] = None,
                   revision: str = 'main') -> Path:
    """Copy a checkpoint folder into the Hugging Face cache as ``repo_id``, so ``hf-hub:<repo_id>`` and tags
    naming that ``hf_hub_id`` load offline (``HF_HUB_OFFLINE=1``) exactly as if downloaded."""
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


def ship_pretrained(run_dir: Union[str, Path], weights_dir: Optional[Union[str, Path]] = None,
                    replace: bool = False) -> str:
    """Copy a finished run's weights into the package (``timm_lipschitz/weights``) and register its tag in
    ``weights/index.json``; returns the model name ``<arch>.<tag>`` (registered on the next import).

    The index records each entry's recipe hash: shipping a different run (another recipe) under a name that is
    already shipped is refused unless ``replace=True``, so a tag never silently changes what it loads.
    """
    run_dir = Path(run_dir)
    require_finished(run_dir, CheckpointError)
    meta = read_metadata(run_dir)
    config = read_config(run_dir)
    name = f"{meta['architecture']}.{meta['tag']}"
    out_dir = Path(weights_dir) if weights_dir else WEIGHTS_DIR
    index_file = out_dir / INDEX.name
    index = read_json(index_file) if index_file.is_file() else {}
    old = index.get(name)
    if old is not None and old.get('recipe_hash') != meta.get('recipe_hash') and not replace:
        raise CheckpointError(
            f'{name} is already shipped from another run (recipe hash {old.get("recipe_hash") or "unrecorded"}, '
            f'this run {meta.get("recipe_hash")}); pass replace=True to replace it, or train under another name.')
    shutil.copy2(run_dir / WEIGHTS_NAME, out_dir / f'{name}.safetensors')
    pcfg = dict(config.get('pretrained_cfg', {}))
    crop = training_crop_pct(pcfg, _run_recipe(run_dir))  # timm's own transform then reproduces the inputs
    if crop is not None:
        pcfg['crop_pct'] = crop
    if pcfg.get('crop_pct') == 1.0:
        pcfg.pop('crop_pct')  # the architecture's default
    index[name] = {'file': f'{name}.safetensors', 'recipe_hash': meta.get('recipe_hash'),
                   'cfg': {k: pcfg[k] for k in ('input_size', 'mean', 'std', 'num_classes', 'label_names',
                                                'pool_size', 'crop_pct', 'license') if k in pcfg}}
    args = {k: v for k, v in config.get('model_args', {}).items() if k not in ('num_classes', 'in_chans')}
    if args:  # a shape other than the architecture's default: the tag builds it (models/_pretrained.tag_model_args)
        index[name]['model_args'] = args
    atomic_write_json(index_file, dict(sorted(index.items())))
    return name

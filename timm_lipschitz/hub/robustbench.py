"""``timm-lipschitz export --robustbench``: a model in RobustBench's form, with its model-info JSON.

The export folder holds ``model.safetensors`` (the model with its normalization inside, :class:`RobustBenchModel`),
``<Name>.json`` (RobustBench's model-info fields, filled from this project's own AutoAttack or corruption results
recorded in the model's metadata) and is listed in the exports index, which ``import timm_lipschitz`` registers
with timm under the name RobustBench's ``load_model`` looks up (:mod:`timm_lipschitz.models.robustbench`). The
``robustbench`` package itself is not needed (it pins an old timm): the contract its ``load_model`` relies on is
what the tests check.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

from safetensors.torch import save as st_save

from ..errors import UsageError
from ..fileio import atomic_write_bytes, atomic_write_json, read_json
from ..folders import PRODUCTS, check_output_folder, record_outputs
from ..models.robustbench import RobustBenchModel, entry_name, exports_home, register_export
from .sources import load_model, load_robustness, resolve

__all__ = ['export_robustbench', 'model_info', 'THREATS', 'PAPER']

THREATS = {'l2': 'L2', 'linf': 'Linf', 'corruptions': 'corruptions'}
RB_DATASETS = {'cifar10': 'cifar10', 'cifar100': 'cifar100', 'imagenet': 'imagenet'}
PAPER = {'link': 'https://arxiv.org/abs/1811.09008', 'name': 'Towards Robust Neural Networks with Lipschitz Continuity',
         'authors': 'Muhammad Usama, Dong Eui Chang', 'venue': 'IWDW 2018'}


def _threat(threat: str) -> str:
    key = str(threat).lower()
    if key not in THREATS:
        raise UsageError(f'--threat {threat!r} is not a RobustBench threat model; choose one of '
                         f'{sorted(THREATS.values())}.')
    return THREATS[key]


def _name(name: str) -> str:
    if not re.fullmatch(r'[A-Za-z][A-Za-z0-9_-]*', str(name)):
        raise UsageError(f'--name {name!r}: give a RobustBench model name such as Usama2026Lipschitz (letters, digits, '
                         f'- and _, starting with a letter).')
    return name


def _eps_text(eps: float, threat: str) -> str:
    """RobustBench writes L-inf budgets that are whole levels as fractions of 255 (``8/255``), others as decimals."""
    levels = round(eps * 255)
    return f'{levels}/255' if threat == 'Linf' and levels > 0 and abs(eps * 255 - levels) < 1e-6 else f'{eps:g}'


def _scores(summary: Dict[str, Any], threat: str, source: str) -> Tuple[Optional[float], Optional[float], str]:
    """(eps, robust accuracy, footnote) of the threat from a model's recorded results; a missing one is an error
    that says how to record it."""
    if threat == 'corruptions':
        if summary.get('corruption_mean') is None:
            raise UsageError(f'no corruption result is recorded for {source}; record one with timm-lipschitz eval '
                             f'{_folder_hint(source)} --corruptions --record, then export again.')
        names = summary.get('corruption_names')
        over = (f"the {len(names)} corruptions {', '.join(names)}" if names else
                'the CIFAR-10-C corruptions it recorded (a record from before 0.3 does not name them)')
        return None, float(summary['corruption_mean']), (
            f"Mean over {over}, computed on the fly with CIFAR-10-C's constants, severities "
            f"{summary.get('corruption_severities')}, {summary.get('corruption_images')} test images.")
    norm = threat.lower()
    found = {float(k.split('@', 1)[1]): v for k, v in summary.items()
             if k.startswith(f'autoattack_{norm}@') and v is not None}
    if not found:
        other = sorted(k for k in summary if f'_{norm}@' in k)
        raise UsageError(f'no AutoAttack result at {threat} is recorded for this model (RobustBench reports '
                         f'AutoAttack{"; recorded: " + ", ".join(other) if other else ""}); record one with '
                         f'timm-lipschitz eval {_folder_hint(source)} --attack {norm} --attack-method autoattack '
                         f'--record, then export again.')
    eps = max(found)
    return eps, float(found[eps]), f"AutoAttack (ART) on {summary.get('attack_images')} test images."


def _folder_hint(source: str) -> str:
    """Results are recorded into folders: a tag is first saved to one."""
    if Path(source).is_dir():
        return source
    return f'FOLDER (a tag\'s bundled files are read-only: save {source} to a FOLDER with hub.save_pretrained)'


def model_info(name: str, summary: Dict[str, Any], dataset: str, threat: str, architecture: str,
               paper: Optional[Dict[str, str]] = None, source: str = 'SOURCE') -> Dict[str, Any]:
    """RobustBench's model-info fields (accuracies as strings of two decimals, as its files write them)."""
    eps, robust, footnote = _scores(summary, threat, source)
    if summary.get('acc@0') is None:
        raise UsageError('the model has no recorded clean accuracy (its metadata has no robustness summary).')
    info: Dict[str, Any] = {**PAPER, **(paper or {})}
    info.update({'additional_data': False, 'number_forward_passes': 1, 'dataset': dataset,
                 'architecture': architecture,
                 'eps': None if eps is None else _eps_text(eps, threat), 'clean_acc': f"{summary['acc@0']:.2f}",
                 'reported': f'{robust:.2f}',
                 ('corruptions_acc' if threat == 'corruptions' else 'autoattack_acc'): f'{robust:.2f}',
                 'footnote': f"{footnote} Clean accuracy on {summary.get('num_images')} test images. Exported by "
                             f"timm-lipschitz as {name}."})
    return info


def export_robustbench(source: str, name: str, threat: str, out_dir: Optional[Union[str, Path]] = None,
                       paper: Optional[Dict[str, str]] = None) -> Tuple[str, Path, Dict[str, Any]]:
    """Export a run folder, checkpoint folder or tag; returns (the timm entry name, the export folder, the model
    info written there)."""
    threat, name = _threat(threat), _name(name)
    if out_dir is not None:
        check_output_folder(out_dir, '--out', writes=PRODUCTS['export'])
    resolved = resolve(str(source))
    model, _ = load_model(str(source))
    summary = load_robustness(source)
    own = summary.get('dataset', '')
    dataset = RB_DATASETS.get(own, re.sub(r'[^a-z0-9_]', '', own.lower()))
    arch = model.pretrained_cfg.get('architecture') or summary.get('architecture')
    details = model_info(name, summary, dataset, threat, f"{arch} (timm-lipschitz)", paper, str(source))
    entry = entry_name(name, dataset, threat)
    folder = Path(out_dir) if out_dir else exports_home() / entry
    cfg = model.pretrained_cfg
    mean, std = cfg['mean'], cfg['std']
    wrapped = RobustBenchModel.wrap(model, mean, std)  # the weights; the mode is not saved
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in wrapped.state_dict().items()}
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(folder / 'model.safetensors', st_save(tensors, metadata={'format': 'pt', 'entry': entry}))
    atomic_write_json(folder / f'{name}.json', details)
    record_outputs(folder, ['model.safetensors', f'{name}.json'], 'timm-lipschitz export --robustbench')
    args = {k: v for k, v in resolved.config.get('model_args', {}).items() if k not in ('num_classes', 'in_chans')}
    spec = {'folder': str(folder.resolve()), 'arch': arch, 'model_args': args,
            'num_classes': int(model.num_classes), 'input_size': [int(s) for s in cfg['input_size']],
            'crop_pct': cfg.get('crop_pct', 1.0), 'mean': list(mean), 'std': list(std),
            'first_conv': cfg.get('first_conv', 'conv1'), 'classifier': cfg.get('classifier', 'fc'),
            'threat': threat, 'dataset': dataset, 'source': str(source)}
    index_file = exports_home() / 'index.json'
    index = read_json(index_file) if index_file.is_file() else {}
    index[entry] = spec
    index_file.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(index_file, dict(sorted(index.items())))
    register_export(entry, spec)  # usable in this process too
    return entry, folder, details

"""``timm-lipschitz eval``: robustness evaluation of runs, checkpoint folders, or registered models with a checkpoint
file or their pretrained tag; writes ``eval.json``, ``eval.md`` and plots.

This module orchestrates; the measurements are :mod:`timm_lipschitz.robustness` (noise sweeps under the evaluation
protocol, Lipschitz estimates and bounds, certificates). ``eval.json`` layout (``format_version`` 2)::

    {"format_version": 2, "models": {<label>: {"data": ..., "split": ..., "device": ..., "sweep": {...},
                                                "lipschitz": {...}, "smoothing": {...}, ...}}}

Files of 0.1.0 (format 1) hold the ``models`` mapping at the top level; :func:`read_eval` reads both.
"""
from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from torch.utils.data import Dataset

from .fileio import atomic_write_json, atomic_write_text, read_json

__all__ = ['load_model', 'resolve_device', 'evaluate', 'run_from_args', 'extra_evaluations', 'read_eval',
           'EVAL_FORMAT_VERSION', 'ClassNamesWarning']

EVAL_FORMAT_VERSION = 2


class ClassNamesWarning(UserWarning):
    """The model's class names differ from the evaluation data's: the accuracy compares unrelated labels."""


def read_eval(path) -> Dict[str, Any]:
    """The per-model entries of an ``eval.json`` (format 2, or 0.1.0's flat format 1)."""
    data = read_json(path)
    return data['models'] if 'format_version' in data else data


# ---- what to evaluate ----------------------------------------------------------------------------------------------
def _unfinished_message(folder: Path) -> Optional[str]:
    from .runs import run_status
    status = run_status(folder)
    if status and status.startswith('an unfinished') and not (folder / 'model.safetensors').is_file():
        return (f'{folder} holds {status}: there are no final weights to evaluate. Finish it with '
                f'timm-lipschitz train --recipe {folder / "recipe.yaml"} --resume.')
    return None


def _num_classes_of(checkpoint: str, model_name: str) -> int:
    """The class count a checkpoint file was saved with: its metadata, else its classifier's weight."""
    import timm
    from safetensors import safe_open

    from .hub import read_metadata
    meta = read_metadata(checkpoint)
    if meta.get('num_classes'):
        return int(meta['num_classes'])
    classifier = getattr(timm.models.get_pretrained_cfg(model_name), 'classifier', None) or 'fc'
    with safe_open(str(checkpoint), framework='pt') as f:
        key = f'{classifier}.weight'
        if key in f.keys():
            return int(f.get_slice(key).get_shape()[0])
    raise ValueError(f'--checkpoint {checkpoint}: its class count is recorded nowhere (no num_classes metadata, '
                     f'no {classifier}.weight); save it with timm_lipschitz.hub.save_pretrained.')


def load_model(source: Optional[str] = None, model_name: Optional[str] = None, checkpoint: Optional[str] = None,
               pretrained: bool = False) -> Tuple[nn.Module, Dict[str, Any]]:
    """A model and what is known of how it was trained (the run's recipe and the checkpoint's metadata).

    ``source``: a run folder or checkpoint folder (``config.json`` + ``model.safetensors``).
    ``model_name`` with ``checkpoint`` (a safetensors file) or ``pretrained`` (its registered tag).
    """
    import timm

    from .hub import CheckpointError, load_checkpoint, load_pretrained, read_metadata
    if source is not None:
        folder = Path(source)
        unfinished = _unfinished_message(folder)
        if unfinished:
            raise CheckpointError(unfinished)
        model = load_pretrained(folder)
        recipe = {}
        if (folder / 'recipe.yaml').is_file():
            import yaml
            recipe = yaml.safe_load((folder / 'recipe.yaml').read_text())
        return model, {'label': recipe.get('name') or folder.name, 'recipe': recipe,
                       'metadata': read_metadata(folder), 'folder': folder}
    if model_name is None:
        raise ValueError('give a run/checkpoint folder, or --model NAME with --checkpoint PATH or --pretrained.')
    if checkpoint is not None:
        model = timm.create_model(model_name, pretrained=False, num_classes=_num_classes_of(checkpoint, model_name),
                                  **_args_beside(checkpoint))
        load_checkpoint(model, checkpoint)
        return model, {'label': Path(checkpoint).stem if Path(checkpoint).stem != 'model' else model_name,
                       'recipe': {}, 'metadata': read_metadata(checkpoint)}
    if pretrained:
        cfg = timm.models.get_pretrained_cfg(model_name)
        if cfg is None or not (cfg.file or cfg.hf_hub_id or cfg.url):
            raise CheckpointError(f'{model_name!r} has no pretrained weights; registered tags with weights: '
                                  f'{timm.list_pretrained(model_name.split(".")[0] + "*")}.')
        model = timm.create_model(model_name, pretrained=True)
        meta = read_metadata(cfg.file) if cfg.file else {}
        return model, {'label': model_name, 'recipe': {}, 'metadata': meta}
    raise ValueError(f'--model {model_name} needs --checkpoint PATH or --pretrained.')


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
        raise ValueError(f'--device {name!r} is not a device; use auto, cpu, cuda or cuda:N.') from e
    if device.type not in ('cpu', 'cuda'):
        raise ValueError(f'--device {name!r} is not supported; use auto, cpu, cuda or cuda:N.')
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise ValueError(f'--device {name!r}: CUDA is not available on this machine; use auto or cpu.')
    return device


def _args_beside(checkpoint: str) -> Dict[str, Any]:
    """model_args and pretrained_cfg from a config.json next to the checkpoint file, if there is one."""
    cfg_file = Path(checkpoint).parent / 'config.json'
    if not cfg_file.is_file():
        return {}
    cfg = read_json(cfg_file)
    args = {k: v for k, v in cfg.get('model_args', {}).items() if k != 'num_classes'}
    return {**args, 'pretrained_cfg_overlay': cfg.get('pretrained_cfg', {})}


def _check_input_size(model: nn.Module, size: Sequence[int]) -> None:
    """One forward of a zero image at ``size``: a size the model cannot take fails here, naming the flag."""
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, *size))
    except RuntimeError as e:
        raise ValueError(f'--input-size {",".join(map(str, size))} does not fit the model (its pretrained_cfg '
                         f'input_size is {tuple(model.pretrained_cfg["input_size"])}): {str(e).splitlines()[0]}') \
            from None
    finally:
        model.train(was)


def _data_for(model: nn.Module, info: Dict[str, Any], data: Optional[str], root: Optional[str],
              input_size: Optional[Sequence[int]], split: str, max_images: Optional[int]):
    from .data import check_labels, create_dataset
    recipe_data = info['recipe'].get('data', {})
    name = data or recipe_data.get('name') or info['metadata'].get('dataset')
    if not name:
        raise ValueError('which data? give --data NAME (the model carries no record of its training data).')
    size = tuple(input_size) if input_size else tuple(model.pretrained_cfg['input_size'])
    if input_size:
        _check_input_size(model, size)
    kwargs = recipe_data.get('kwargs', {}) if name == recipe_data.get('name') else {}
    ds, dinfo = create_dataset(name, split, root=root or recipe_data.get('root'), input_size=size, **kwargs)
    if dinfo.num_classes > model.num_classes:
        raise ValueError(f'{name} has {dinfo.num_classes} classes but the model has num_classes='
                         f'{model.num_classes}; evaluate it on data with at most {model.num_classes} classes.')
    own = list(model.pretrained_cfg.get('label_names') or [])
    if own and dinfo.class_names and own[:len(dinfo.class_names)] != list(dinfo.class_names):
        warnings.warn(f'the model was trained on classes {own[:4]}... but {name} has {dinfo.class_names[:4]}...: '
                      f'its accuracy there compares unrelated labels.', ClassNamesWarning, stacklevel=2)
    if hasattr(ds, 'labels'):
        check_labels(ds.labels, model.num_classes, f'{name}/{split}')
    if max_images is not None and max_images < len(ds):
        ds = torch.utils.data.Subset(ds, list(range(max_images)))
    return ds, name


# ---- extra measurements ------------------------------------------------------------------------------------------
def _spread_subset(data: Dataset, n: int) -> Dataset:
    if len(data) <= n:
        return data
    return torch.utils.data.Subset(data, list(range(0, len(data), len(data) // n))[:n])


SMOOTHING_SETTINGS = ('sigma', 'n0', 'n', 'alpha', 'num_images')  # certify_args keys that reach certify_dataset


def _smoothing(model: nn.Module, data: Dataset, certify_args: Dict[str, Any], mean, std, seed: int,
               radii: Optional[Sequence[float]] = None) -> Dict[str, Any]:
    """Randomized-smoothing certificates with the settings ``certify_args`` gives (certify_dataset's defaults for
    the others), at ``radii`` (default :data:`~.robustness.certify.CERT_RADII`)."""
    from .robustness.certify import CERT_RADII, certify_dataset
    settings = {k: certify_args[k] for k in SMOOTHING_SETTINGS if certify_args.get(k) is not None}
    return certify_dataset(model, data, model.num_classes, radii=CERT_RADII if radii is None else radii, mean=mean,
                           std=std, seed=seed, **settings)


def extra_evaluations(model: nn.Module, data: Dataset, lipschitz: bool, certify: bool,
                      certify_args: Dict[str, Any], mean=None, std=None, seed: int = 0) -> Dict[str, Any]:
    """Lipschitz estimates and bounds, and certificates: the measurements, their markdown, for one model."""
    from .robustness.certify import CERT_RADII, theorem1_radius
    from .robustness.lipschitz import margin_certificate, pgd_lower_bound, sampled_k, spectral_upper_bound
    res: Dict[str, Any] = {}
    subset = _spread_subset(data, 1000)
    if lipschitz or certify:
        try:
            upper = spectral_upper_bound(model, mean=mean, std=std)
        except NotImplementedError as e:
            upper = {'bound': None, 'method': str(e)}
        res['lipschitz'] = {
            'k_sigma_0.25': sampled_k(model, subset, 0.25, seed=seed, mean=mean, std=std),
            'pgd_lower_bound': pgd_lower_bound(model, subset, seed=seed, mean=mean, std=std, max_images=128),
            'upper_bound': upper,
        }
        k, lo, hi = res['lipschitz']['k_sigma_0.25'], res['lipschitz']['pgd_lower_bound']['max'], upper['bound']
        res['lipschitz_md'] = {'title': 'Lipschitz constant of the logits w.r.t. [0,1] pixels', 'table': '\n'.join([
            '| quantity | value |', '|---|---|',
            f"| sampled k(x) at σ 0.25: mean / p95 / max | {k['mean']:.3f} / {k['p95']:.3f} / {k['max']:.3f} |",
            f'| PGD lower bound (max over images) | {lo:.3f} |',
            f"| upper bound ({upper['method'][:60]}...) | {'n/a' if hi is None else f'{hi:.4g}'} |"])}
    if certify:
        smooth = _smoothing(model, data, certify_args, mean, std, seed)
        res['smoothing'] = smooth
        res['certified_curve'] = {'radii': smooth['radii'], 'accuracy': smooth['certified_accuracy']}
        lines = ['| certificate | ' + ' | '.join(f'r = {r:g}' for r in CERT_RADII) + ' | mean radius |',
                 '|---|' + '---|' * (len(CERT_RADII) + 1),
                 f"| randomized smoothing σ {smooth['sigma']:g} (n0 {smooth['n0']}, n {smooth['n']}, α "
                 f"{smooth['alpha']:g}, {smooth['num_images']} images) | " +
                 ' | '.join(f'{v:.1f}' if r <= smooth['max_radius'] else '–'
                            for r, v in zip(CERT_RADII, smooth['certified_accuracy'])) +
                 f" | {smooth['average_certified_radius']:.3f} |"]
        if res['lipschitz']['upper_bound']['bound']:
            mc = margin_certificate(model, subset, res['lipschitz']['upper_bound']['bound'], mean=mean, std=std)
            res['margin_certificate'] = mc
            lines.append('| Lipschitz margin (global upper bound) | ' +
                         ' | '.join(f'{v:.1f}' for v in mc['certified_accuracy']) + f" | {mc['mean_radius']:.2e} |")
        if smooth['max_radius'] < max(CERT_RADII):
            lines += ['', f"–: beyond randomized smoothing's reach with these settings: no radius above σ Φ⁻¹(α^(1/n)) "
                          f"= {smooth['max_radius']:.3f} can be certified, however robust the model (raise n or σ)."]
        ln = (certify_args.get('hparams') or {}).get('lipschitz_target')  # the L_n the model was trained with
        if ln:
            t1 = theorem1_radius(ln, 'probs')
            probs_lo = pgd_lower_bound(model, subset, seed=seed, mean=mean, std=std, max_images=128, output='probs')
            res['theorem1'] = {'lipschitz_target': ln, 'radius': t1, 'measured_lower_bound_probs': probs_lo['max'],
                               'holds': probs_lo['max'] <= ln}
            lines += ['', f"Theorem 1 (conditional): ρ/L_n = {t1:.2f} with ρ = √2/2 and L_n = {ln:g}, valid only if "
                          f"the softmax output is L_n-Lipschitz. Measured lower bound of its Lipschitz constant: "
                          f"{probs_lo['max']:.3f} ({'consistent with' if probs_lo['max'] <= ln else 'exceeds'} "
                          f"L_n{'' if probs_lo['max'] <= ln else ': the condition fails, no radius is certified'})."]
        res['certify_md'] = {'title': 'certified accuracy (%) at l2 radius', 'table': '\n'.join(lines)}
    return res


# ---- the evaluation ------------------------------------------------------------------------------------------------
def evaluate(models: List[Tuple[nn.Module, Dict[str, Any]]], out_dir: str, data: Optional[str] = None,
             root: Optional[str] = None, input_size: Optional[Sequence[int]] = None, split: str = 'test',
             sigmas: Any = None, repeats: int = 1, seed: int = 0, clip: bool = False, quantize: bool = False,
             batch_size: int = 256, max_images: Optional[int] = None, mean=None, std=None,
             lipschitz: bool = False, certify: bool = False, certify_args: Optional[Dict[str, Any]] = None,
             demo: bool = False, progress: bool = True, device: str = 'cpu', corruptions: Any = None,
             severities: Sequence[int] = (1, 2, 3, 4, 5), attacks: Optional[Dict[str, Any]] = None,
             record: bool = True) -> Dict[str, Any]:
    """Evaluate each model on its data; write ``eval.json``, ``eval.md``, ``eval.png`` (and more) in ``out_dir``.

    ``sigmas`` is a grid or a preset of the evaluation protocol (a preset brings its clipping and rounding). The
    noise sweep runs on ``device``; the optional extras (Lipschitz estimates, certificates, the demo grid) run on
    the CPU, where their per-image loops are written to run. ``corruptions`` (``'all'``, a family, or names) adds
    the CIFAR-10-C corruptions at ``severities``; ``attacks`` (the keyword arguments of
    :func:`~timm_lipschitz.robustness.attacks.attack_sweep`) adds robust accuracy under L2 / L-inf attacks, with a
    randomized-smoothing certified accuracy at the same L2 radii (``certify_args``) for comparison. With ``record``,
    corruption and attack results of a run or checkpoint folder are also written into that folder (its
    ``robustness.json``, metadata summary and model card).
    """
    from .robustness import noise_sweep, plot_sweeps, summary_table, sweep_table, unique_label
    sweep_device = resolve_device(device)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f'--out {out} is a file; give a folder for eval.json, eval.md and the plots.')
    out.mkdir(parents=True, exist_ok=True)
    results: Dict[str, Any] = {}
    sweeps: Dict[str, Any] = {}
    demo_models: Dict[str, nn.Module] = {}
    demo_data = None
    for model, info in models:
        model.eval()
        ds, name = _data_for(model, info, data, root, input_size, split, max_images)
        label = unique_label(info['label'], results)
        sweep = noise_sweep(model.to(sweep_device), ds, sigmas, repeats, seed, clip=clip,
                            quantize=quantize, batch_size=batch_size, mean=mean, std=std, progress=progress)
        model.cpu()
        entry: Dict[str, Any] = {'data': name, 'split': split, 'device': device_name(sweep_device),
                                 'sweep': sweep.to_dict()}
        if corruptions is not None:
            from .robustness.corruptions import corruption_sweep
            entry['corruptions'] = corruption_sweep(model.to(sweep_device), ds, corruptions, severities, seed,
                                                    batch_size=batch_size, mean=mean, std=std, progress=progress)
            model.cpu()
        if attacks is not None:
            entry['attacks'] = _attacks(model.to(sweep_device), ds, attacks, certify_args or {}, mean, std, seed)
            model.cpu()
        if lipschitz or certify:
            hp = json.loads(info['metadata'].get('hparams', '{}') or '{}')
            entry.update(extra_evaluations(model, ds, lipschitz=lipschitz, certify=certify,
                                           certify_args={**(certify_args or {}), 'hparams': hp},
                                           mean=mean, std=std, seed=seed))
        results[label] = entry
        sweeps[label] = sweep
        demo_models[label] = model
        demo_data = demo_data if demo_data is not None else ds
    if demo:
        # the paper's Table 1: one test image at sigma 0..0.6, every model's prediction and confidence
        from .robustness.certify import demo_grid
        x, y = demo_data[0]
        first = next(iter(demo_models.values()))
        rows = demo_grid(demo_models, x, int(y), out / 'demo.png', class_names=first.pretrained_cfg.get('label_names'),
                         seed=seed, mean=mean, std=std)
        for label in results:
            results[label]['demo'] = [r for r in rows if r['model'] == label]
    atomic_write_json(out / 'eval.json', {'format_version': EVAL_FORMAT_VERSION, 'models': results})
    md = ['# Robustness evaluation', '', summary_table(sweeps), '', sweep_table(sweeps), '']
    md += _corruption_outputs(results, out)
    md += _attack_outputs(results, out)
    for label, entry in results.items():
        for key in ('lipschitz_md', 'certify_md'):
            if key in entry:
                md += [f'## {label}: {entry[key]["title"]}', '', entry[key]['table'], '']
    atomic_write_text(out / 'eval.md', '\n'.join(md))
    plot_sweeps(sweeps, out / 'eval.png')
    certified = {k: v['certified_curve'] for k, v in results.items() if 'certified_curve' in v}
    if certified:
        from .robustness import plot_certified
        plot_certified(certified, out / 'certified.png')
    if record:
        _record_in_folders(models, results)
    return results


def _file_label(label: str) -> str:
    import re
    return re.sub(r'[^A-Za-z0-9._-]+', '_', label)


def _corruption_outputs(results: Dict[str, Any], out: Path) -> List[str]:
    """The corruption table (markdown), a heatmap per model and the family bar chart across models."""
    from .robustness.report import corruption_table, plot_corruption_families, plot_corruption_heatmap
    found = {label: e['corruptions'] for label, e in results.items() if 'corruptions' in e}
    if not found:
        return []
    for label, c in found.items():
        plot_corruption_heatmap(c, out / f'corruptions_{_file_label(label)}.png', f'{label}: accuracy (%)')
    plot_corruption_families(found, out / 'corruption_families.png')
    first = next(iter(found.values()))
    return ['## Common corruptions (CIFAR-10-C constants, computed on the fly)', '',
            f"Accuracy (%) averaged over severities {first['severities']}; {first['num_images']} images, seed "
            f"{first['seed']}.", '', corruption_table(found), '', '![families](corruption_families.png)', '']


def _attacks(model: nn.Module, data: Dataset, attacks: Dict[str, Any], certify_args: Dict[str, Any], mean, std,
             seed: int) -> Dict[str, Any]:
    """The attack sweep, and randomized smoothing's certified accuracy at the L2 radii attacked."""
    from .robustness.attacks import attack_sweep
    attacks = dict(attacks)
    smoothing = attacks.pop('smoothing', True)
    result = attack_sweep(model, data, seed=seed, mean=mean, std=std, **attacks)
    if 'l2' in result and smoothing:
        radii = [0.0] + [float(e) for e in result['l2']]
        smooth = _smoothing(model.cpu(), data, certify_args, mean, std, seed, radii)
        reach = smooth['max_radius']  # beyond it no image can be certified: None there, not a measured 0
        result['smoothing'] = {'sigma': smooth['sigma'], 'n': smooth['n'], 'alpha': smooth['alpha'],
                               'num_images': smooth['num_images'], 'clean': smooth['certified_accuracy'][0],
                               'max_radius': reach,
                               'l2': {e: acc if float(e) <= reach else None
                                      for e, acc in zip(result['l2'], smooth['certified_accuracy'][1:])}}
    return result


def _attack_outputs(results: Dict[str, Any], out: Path) -> List[str]:
    """The robust-accuracy table (markdown) and one accuracy-vs-epsilon plot per norm, models overlaid."""
    from .robustness.attacks import NORMS
    from .robustness.report import attack_table, plot_attacks
    found = {label: e['attacks'] for label, e in results.items() if 'attacks' in e}
    if not found:
        return []
    md = ['## Adversarial robustness', '', attack_table(found), '']
    for norm in NORMS:
        if any(norm in r for r in found.values()):
            plot_attacks(found, out / f'attacks_{norm}.png', norm)
            md += [f'![{norm}](attacks_{norm}.png)', '']
    return md


def _record_in_folders(models: List[Tuple[nn.Module, Dict[str, Any]]], results: Dict[str, Any]) -> None:
    """Corruption and attack results of a run or checkpoint folder go into that folder's own files too."""
    from .hub import record_evaluation
    for (model, info), (label, entry) in zip(models, results.items()):
        folder = info.get('folder')
        extra = {k: entry[k] for k in ('corruptions', 'attacks') if k in entry}
        if folder is not None and extra:
            record_evaluation(folder, **extra)


# ---- command line (arguments: timm_lipschitz.cli.add_eval_arguments) ----------------------------------------------
def _floats(text: Optional[str], flag: str) -> Optional[List[float]]:
    if not text:
        return None
    try:
        return [float(x) for x in text.split(',')]
    except ValueError:
        raise ValueError(f'{flag} {text!r} is not a comma list of numbers (e.g. {flag} 0.5,0.5,0.5).') from None


def _ints(text: Optional[str], flag: str, count: Optional[int]) -> Optional[List[int]]:
    if not text:
        return None
    try:
        values = [int(x) for x in text.split(',')]
    except ValueError:
        values = []
    if count is not None and (len(values) != count or any(v < 1 for v in values)):
        raise ValueError(f'{flag} {text!r} is not allowed; give {count} positive integers (C,H,W), e.g. 1,32,32.')
    if count is None and not values:
        raise ValueError(f'{flag} {text!r} is not allowed; give a comma list of integers, e.g. 1,3,5.')
    return values


def _attack_request(args: argparse.Namespace) -> Optional[Dict[str, Any]]:
    """--attack and its flags as attack_sweep's keyword arguments (checked before any model loads)."""
    if args.attack is None:
        return None
    from .robustness.attacks import METHODS, NORMS, AttackError, _require_art, parse_eps
    norms = [n.strip() for n in args.attack.split(',') if n.strip()]
    bad = [n for n in norms if n not in NORMS]
    if bad or not norms:
        raise AttackError(f'--attack {args.attack!r}: norms {bad or norms} are not allowed; choose from {NORMS}.')
    method = args.attack_method
    if method == 'auto':
        method = 'autoattack' if resolve_device(args.device).type == 'cuda' else 'pgd'
    if method not in METHODS:
        raise AttackError(f'--attack-method {method!r} is not allowed; choose auto or one of {METHODS}.')
    eps: Dict[str, List[float]] = {}
    for text in args.eps or []:
        eps.update(parse_eps(text))
    for name, value in (('--attack-images', args.attack_images), ('--attack-steps', args.attack_steps)):
        if value < 1:
            raise AttackError(f'{name} {value} is not allowed; it must be >= 1.')
    _require_art()
    return {'norms': norms, 'eps': eps or None, 'method': method, 'steps': args.attack_steps,
            'max_images': args.attack_images, 'black_box': args.black_box, 'batch_size': args.batch_size}


def run_from_args(args: argparse.Namespace) -> Dict[str, Any]:
    resolve_device(args.device)  # a bad --device fails before any model or data is loaded
    severities = _ints(args.severities, '--severities', None) or (1, 2, 3, 4, 5)
    if args.corruptions is not None:
        from .robustness.corruptions import _check_severity, resolve_corruptions
        resolve_corruptions(args.corruptions)
        for s in severities:
            _check_severity(s)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f'--out {out} is a file; give a folder for eval.json, eval.md and the plots.')
    mean, std = _floats(args.mean, '--mean'), _floats(args.std, '--std')
    if (mean is None) != (std is None):
        raise ValueError('--mean and --std go together: give both or neither.')
    size = _ints(args.input_size, '--input-size', 3)
    attacks = _attack_request(args)  # a bad attack request fails before any model or data is loaded
    models = [load_model(s) for s in args.sources]
    if args.model:
        models.append(load_model(model_name=args.model, checkpoint=args.checkpoint, pretrained=args.pretrained))
    if not models:
        raise ValueError('nothing to evaluate: give run folders, or --model NAME with --checkpoint/--pretrained.')
    results = evaluate(models, args.out, data=args.data, root=args.data_root, input_size=size, split=args.split,
                       sigmas=args.preset or args.sigmas, repeats=args.repeats, seed=args.seed, clip=args.clip,
                       batch_size=args.batch_size, max_images=args.max_images, mean=mean, std=std,
                       lipschitz=args.lipschitz, certify=args.certify,
                       certify_args=dict(sigma=args.certify_sigma, n0=args.n0, n=args.n, alpha=args.alpha,
                                         num_images=args.certify_images),
                       demo=args.demo, progress=not args.no_progress, device=args.device,
                       corruptions=args.corruptions, severities=severities, attacks=attacks)
    print((out / 'eval.md').read_text())
    print(f'wrote {out}/eval.json, eval.md, eval.png')
    return results

"""The evaluation itself: every requested measurement for each model, then ``eval.json``, ``eval.md`` and the plots,
and (for run and checkpoint folders) the folder's own record. The measurements are
:mod:`timm_lipschitz.robustness`; their tables and plots are :mod:`timm_lipschitz.robustness.report`."""
from __future__ import annotations

import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import timm
import torch
import torch.nn as nn
from torch.utils.data import Dataset

from .. import __version__
from ..certificates import (DETERMINISTIC_KEY, Declaration, check_certified_unbroken, check_declared,
                            dataset_certificate, declaration, theorem1_radius)
from ..fileio import atomic_write_json, atomic_write_text, read_json
from ..folders import MANIFEST_NAME, PRODUCTS, check_output_folder, record_outputs
from ..modes import eval_mode, for_evaluation
from ..naming import FILE_CHARS, safe_name
from ..protocol import CERT_RADII, SEVERITIES
from ..robustness import plot_certified, plot_sweeps, summary_table, sweep_table, unique_label
from ..robustness.attacks import NORMS, attack_sweep
from ..robustness.certify import at_radii, certify_dataset, cohen_tsv
from ..robustness.corruptions import corruption_sweep
from ..robustness.lipschitz import pgd_lower_bound, sampled_k
from ..robustness.noise import noise_sweep
from ..robustness.report import (attack_table, certificate_comparison, certificate_markdown, corruption_table,
                                 demo_grid, lipschitz_markdown, plot_attacks, plot_corruption_families,
                                 plot_corruption_heatmap)
from ..robustness.subsets import evaluation_subset, subset_record
from .loading import check_overrides, data_for, device_name, model_input_size, resolve_device
from .record import record_in_folders

__all__ = ['evaluate', 'extra_evaluations', 'read_eval', 'check_out_dir', 'EVAL_FORMAT_VERSION',
           'SMOOTHING_SETTINGS']

EVAL_FORMAT_VERSION = 2
SMOOTHING_SETTINGS = ('sigma', 'n0', 'n', 'alpha', 'num_images')  # certify_args keys that reach certify_dataset
K_SIGMA = 0.25            # the sigma of the sampled k(x) statistics (the paper's middle training sigma)
LIPSCHITZ_IMAGES = 1000   # images (a prefix of the evaluation order) of the Lipschitz estimates and margin certificate
PGD_BOUND_IMAGES = 128    # of those, images searched by the PGD lower bound


def read_eval(path) -> Dict[str, Any]:
    """The per-model entries of an ``eval.json`` (format 2, or 0.1.0's flat format 1)."""
    data = read_json(path)
    return data['models'] if 'format_version' in data else data


def environment(command: Optional[str] = None) -> Dict[str, Any]:
    """What produced an ``eval.json``: the package, timm and torch versions, the command (the process's own when
    none is given) and the date."""
    return {'timm_lipschitz': __version__, 'timm': timm.__version__, 'torch': torch.__version__,
            'command': command or ' '.join(shlex.quote(a) for a in [Path(sys.argv[0]).name, *sys.argv[1:]]),
            'date': time.strftime('%Y-%m-%d %H:%M:%S')}


def check_out_dir(out: Path) -> Path:
    """The output folder of an evaluation: new, empty, or written by timm-lipschitz (the one output rule)."""
    return check_output_folder(out, '--out', writes=PRODUCTS['eval'])


# ---- extra measurements ------------------------------------------------------------------------------------------
def _smoothing(model: nn.Module, data: Dataset, certify_args: Dict[str, Any], mean, std, seed: int,
               radii: Optional[Sequence[float]] = None, progress: bool = True) -> Dict[str, Any]:
    """Randomized-smoothing certificates with the settings ``certify_args`` gives (certify_dataset's defaults for
    the others), at ``radii`` (default :data:`~timm_lipschitz.protocol.CERT_RADII`)."""
    settings = {k: certify_args[k] for k in SMOOTHING_SETTINGS if certify_args.get(k) is not None}
    return certify_dataset(model, data, model.num_classes, radii=CERT_RADII if radii is None else radii, mean=mean,
                           std=std, seed=seed, progress=progress, **settings)


def _lipschitz(model: nn.Module, subset: Dataset, decl: Optional[Declaration], mean, std,
               seed: int) -> Dict[str, Any]:
    """The estimates (sampled k, the PGD lower bound) beside the model's declaration (None: it declares none)."""
    upper = {'bound': decl.logits, 'body': decl.body, 'method': decl.method} if decl else \
        {'bound': None, 'method': f'{type(model).__name__} declares no Lipschitz constant'}
    return {f'k_sigma_{K_SIGMA:g}': sampled_k(model, subset, K_SIGMA, seed=seed, mean=mean, std=std),
            'pgd_lower_bound': pgd_lower_bound(model, subset, seed=seed, mean=mean, std=std,
                                               max_images=PGD_BOUND_IMAGES),
            'upper_bound': upper, 'declared': decl.record() if decl else None}


def _theorem1(model: nn.Module, subset: Dataset, lipschitz_target: float, mean, std, seed: int) -> Dict[str, Any]:
    """The paper's Theorem 1 radius, with the measured lower bound of the softmax's constant that conditions it."""
    lower = pgd_lower_bound(model, subset, seed=seed, mean=mean, std=std, max_images=PGD_BOUND_IMAGES,
                            output='probs')['max']
    return {'lipschitz_target': lipschitz_target, 'radius': theorem1_radius(lipschitz_target, 'probs'),
            'measured_lower_bound_probs': lower, 'holds': lower <= lipschitz_target}


def extra_evaluations(model: nn.Module, data: Dataset, lipschitz: bool, certify: bool,
                      certify_args: Dict[str, Any], mean=None, std=None, seed: int = 0,
                      lipschitz_target: Optional[float] = None, progress: bool = True,
                      decl: Optional[Declaration] = None, smooth: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Lipschitz estimates and the declaration, and certificates (randomized smoothing, the deterministic
    certificate of :mod:`timm_lipschitz.certificates` and, for a model trained with a target L_n, the paper's
    conditional Theorem 1 radius): the measurements and their markdown. ``decl``: the model's declaration when the
    caller has it (default: read here, once); ``smooth``: the smoothing result when the caller ran it already."""
    res: Dict[str, Any] = {}
    subset = evaluation_subset(data, LIPSCHITZ_IMAGES, seed)
    if not (lipschitz or certify):
        return res
    decl = decl or declaration(model, mean=mean, std=std)
    res['lipschitz'] = _lipschitz(model, subset, decl, mean, std, seed)
    res['lipschitz_md'] = {'title': 'Lipschitz constant of the logits w.r.t. [0,1] pixels',
                           'table': lipschitz_markdown(res['lipschitz'])}
    if certify:
        smooth = res['smoothing'] = dict(smooth or _smoothing(model, data, certify_args, mean, std, seed,
                                                             progress=progress))
        smooth.update({k: certify_args[k] for k in ('preset', 'departs_from_preset') if k in certify_args})
        res['certified_curve'] = {'radii': smooth['radii'], 'accuracy': smooth['certified_accuracy']}
        if decl is not None:  # the premise checked first: a failed check stops the evaluation (SoundnessError)
            res['soundness'] = check_declared(model, subset, decl, mean, std, seed=seed,
                                              pgd=res['lipschitz']['pgd_lower_bound']['max'])
            # one forward per image: every image of the evaluation data (the full protocol's whole test split)
            cert = res[DETERMINISTIC_KEY] = dataset_certificate(model, data, decl, mean=mean, std=std)
            cert['images'] = subset_record(data)
        if lipschitz_target:
            res['theorem1'] = _theorem1(model, subset, lipschitz_target, mean, std, seed)
        res['certify_md'] = {'title': 'certified accuracy (%) at l2 radius', 'table': certificate_markdown(
            smooth, res.get(DETERMINISTIC_KEY), res.get('theorem1'))}
    return res


def _attacks(model: nn.Module, data: Dataset, attacks: Dict[str, Any], certify_args: Dict[str, Any], mean, std,
             seed: int, progress: bool = True, smooth: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """The attack sweep, and randomized smoothing's certified accuracy at the L2 radii attacked (read from
    ``smooth``, the evaluation's own smoothing run, when ``--certify`` ran one: the same images and samples)."""
    attacks = dict(attacks)
    smoothing = attacks.pop('smoothing', True)
    result = attack_sweep(model, data, seed=seed, mean=mean, std=std, progress=progress, **attacks)
    if 'l2' in result and smoothing:
        radii = [0.0] + [float(e) for e in result['l2']]
        smooth = at_radii(smooth, radii) if smooth else _smoothing(model.cpu(), data, certify_args, mean, std,
                                                                    seed, radii, progress)
        reach = smooth['max_radius']  # beyond it no image can be certified: None there, not a measured 0
        result['smoothing'] = {'sigma': smooth['sigma'], 'n': smooth['n'], 'alpha': smooth['alpha'],
                               'num_images': smooth['num_images'], 'clean': smooth['certified_accuracy'][0],
                               'max_radius': reach,
                               'l2': {e: acc if float(e) <= reach else None
                                      for e, acc in zip(result['l2'], smooth['certified_accuracy'][1:])}}
    return result


# ---- the evaluation ------------------------------------------------------------------------------------------------
def _lipschitz_target(info: Dict[str, Any]) -> Optional[float]:
    """The L_n a model was trained with (its checkpoint metadata's hyperparameters), if any."""
    hparams = json.loads(info['metadata'].get('hparams', '{}') or '{}')
    return hparams.get('lipschitz_target')


def _evaluate_one(model: nn.Module, info: Dict[str, Any], ds: Dataset, name: str, s: Dict[str, Any]):
    """Every requested measurement of one model on its data: (eval.json entry, noise sweep). The measurements run
    the model's evaluation form (:func:`~timm_lipschitz.modes.for_evaluation`: a 1-Lipschitz net's plain export)."""
    device = resolve_device(s['device'])
    overrides = check_overrides(model, s['input_size'], s['mean'], s['std'])
    model = for_evaluation(model)
    sweep = noise_sweep(model.to(device), ds, s['sigmas'], s['repeats'], s['seed'], clip=s['clip'],
                        quantize=s['quantize'], batch_size=s['batch_size'], mean=s['mean'], std=s['std'],
                        progress=s['progress'])
    entry: Dict[str, Any] = {'data': name, 'split': s['split'], 'device': device_name(device),
                             'num_classes': getattr(model, 'num_classes', None),
                             'images': subset_record(ds), 'overrides': overrides,
                             'sweep': sweep.to_dict()}
    if s['corruptions'] is not None:
        entry['corruptions'] = corruption_sweep(model.to(device), ds, s['corruptions'], s['severities'], s['seed'],
                                                batch_size=s['batch_size'], mean=s['mean'], std=s['std'],
                                                progress=s['progress'])
    # one smoothing run answers both --certify and the attacks' certified column
    smooth = _smoothing(model.cpu(), ds, s['certify_args'], s['mean'], s['std'], s['seed'],
                        progress=s['progress']) if s['certify'] else None
    if s['attacks'] is not None:
        entry['attacks'] = _attacks(model.to(device), ds, s['attacks'], s['certify_args'], s['mean'], s['std'],
                                    s['seed'], s['progress'], smooth=smooth)
    model.cpu()
    if s['lipschitz'] or s['certify']:
        decl = declaration(model, mean=s['mean'], std=s['std'])
        entry.update(extra_evaluations(model, ds, lipschitz=s['lipschitz'], certify=s['certify'],
                                       certify_args=s['certify_args'], mean=s['mean'], std=s['std'], seed=s['seed'],
                                       lipschitz_target=_lipschitz_target(info), progress=s['progress'], decl=decl,
                                       smooth=smooth))
        if DETERMINISTIC_KEY in entry and 'l2' in entry.get('attacks', {}):
            entry['soundness']['certified_vs_attack'] = _certified_unbroken(model, ds, entry, decl, s)
    return entry, sweep


def _certified_unbroken(model: nn.Module, ds: Dataset, entry: Dict[str, Any], decl: Declaration,
                        s: Dict[str, Any]) -> Dict[str, Any]:
    """No image certified at an attacked l2 radius was broken there (the certificate recomputed on the attacked
    images themselves); :class:`~timm_lipschitz.certificates.SoundnessError` otherwise."""
    attacks = entry['attacks']
    images = evaluation_subset(ds, attacks['num_images'], s['seed'])
    cert = dataset_certificate(model, images, decl, mean=s['mean'], std=s['std'])
    flags = {e: [c == '1' for c in kept] for e, kept in attacks['per_image']['l2'].items()}
    return check_certified_unbroken(torch.tensor(cert['radius']), flags, attacks['method'])


def _demo(models: Dict[str, nn.Module], data: Dataset, results: Dict[str, Any], out: Path, s: Dict[str, Any]) -> None:
    """The paper's Table 1: one test image at sigma 0..0.6, every model's prediction and confidence."""
    x, y = data[0]
    first = next(iter(models.values()))
    rows = demo_grid(models, x, int(y), out / 'demo.png', class_names=first.pretrained_cfg.get('label_names'),
                     seed=s['seed'], mean=s['mean'], std=s['std'])
    for label in results:
        results[label]['demo'] = [r for r in rows if r['model'] == label]


def evaluate(models: List[Tuple[nn.Module, Dict[str, Any]]], out_dir: str, data: Optional[str] = None,
             root: Optional[str] = None, input_size: Optional[Sequence[int]] = None, split: str = 'test',
             sigmas: Any = None, repeats: int = 1, seed: int = 0, clip: bool = False, quantize: bool = False,
             batch_size: int = 256, max_images: Optional[int] = None, mean=None, std=None,
             lipschitz: bool = False, certify: bool = False, certify_args: Optional[Dict[str, Any]] = None,
             demo: bool = False, progress: bool = True, device: str = 'cpu', corruptions: Any = None,
             severities: Sequence[int] = SEVERITIES, attacks: Optional[Dict[str, Any]] = None,
             record: bool = True, record_departures: bool = False, command: Optional[str] = None) -> Dict[str, Any]:
    """Evaluate each model on its data; write ``eval.json``, ``eval.md``, ``eval.png`` (and more) in ``out_dir``.

    ``sigmas`` is a grid or a preset of the evaluation protocol (a preset brings its clipping and rounding). The
    noise sweep runs on ``device``; the optional extras (Lipschitz estimates, certificates, the demo grid) run on
    the CPU, where their per-image loops are written to run. ``corruptions`` (``'all'``, a family, or names) adds
    the CIFAR-10-C corruptions at ``severities``; ``attacks`` (the keyword arguments of
    :func:`~timm_lipschitz.robustness.attacks.attack_sweep`) adds robust accuracy under L2 / L-inf attacks, with a
    randomized-smoothing certified accuracy at the same L2 radii (``certify_args``) for comparison. With ``record``,
    corruption and attack results of a run or checkpoint folder measured under the full protocol are also written
    into that folder (its ``robustness.json``, metadata summary and model card); ``record_departures`` writes the
    others too, stating how they depart (:mod:`.record`).
    """
    settings = dict(locals())
    settings['certify_args'] = certify_args or {}
    resolve_device(device)
    out = check_out_dir(Path(out_dir))
    results: Dict[str, Any] = {}
    sweeps: Dict[str, Any] = {}
    evaluated: Dict[str, nn.Module] = {}
    first_data = None
    for model, info in models:
        with eval_mode(model):
            size = model_input_size(model, input_size)
            ds, name, where = data_for(model, info, data, root, size, split, max_images, seed)
            label = unique_label(info['label'], results)
            results[label], sweeps[label] = _evaluate_one(model, info, ds, name, {**settings, 'input_size': size})
            results[label]['data_files'] = where
        evaluated[label] = model
        first_data = first_data if first_data is not None else ds
    out.mkdir(parents=True, exist_ok=True)  # after every measurement: a refused evaluation writes nothing
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    if demo:
        _demo(evaluated, first_data, results, out, settings)
    _write_outputs(out, results, sweeps, command)
    record_outputs(out, [p.name for p in out.iterdir() if before.get(p.name) != p.stat().st_mtime_ns and
                         p.name != MANIFEST_NAME], 'timm-lipschitz eval')
    if record:
        record_in_folders(models, results, settings, record_departures)
    return results


# ---- outputs -------------------------------------------------------------------------------------------------------
def _write_outputs(out: Path, results: Dict[str, Any], sweeps: Dict[str, Any], command: Optional[str]) -> None:
    atomic_write_json(out / 'eval.json', {'format_version': EVAL_FORMAT_VERSION, 'environment': environment(command),
                                          'models': results})
    md = ['# Robustness evaluation', '']
    for label, entry in results.items():
        if entry.get('overrides'):
            md += [f"**{label}** evaluated with overrides of its own configuration: " +
                   ', '.join(f'{k} {v}' for k, v in entry['overrides'].items()) + '.', '']
    md += [summary_table(sweeps), '', sweep_table(sweeps), '']
    md += _corruption_outputs(results, out)
    md += _attack_outputs(results, out)
    comparison = certificate_comparison(results)
    if comparison:
        md += ['## Certified and attacked accuracy (%) at l2 radius', '', comparison, '']
    for label, entry in results.items():
        for key in ('lipschitz_md', 'certify_md'):
            if key in entry:
                md += [f'## {label}: {entry[key]["title"]}', '', entry[key]['table'], '']
    atomic_write_text(out / 'eval.md', '\n'.join(md))
    data, chance = _plot_context(results)
    plot_sweeps(sweeps, out / 'eval.png', title=f'Accuracy under Gaussian noise on {data}', chance=chance)
    certified = {k: {**v['certified_curve'], 'num_images': v['smoothing'].get('num_images')}
                 for k, v in results.items() if 'certified_curve' in v}
    for label, entry in results.items():  # Cohen et al.'s per-image file, for their analysis scripts
        if 'smoothing' in entry and 'rows' in entry['smoothing']:
            atomic_write_text(out / f'certify_{safe_name(label, FILE_CHARS, "_")}.tsv', cohen_tsv(entry['smoothing']))
    if certified:
        plot_certified(certified, out / 'certified.png',
                       f'Certified accuracy (randomized smoothing) on {data}', chance)


def _plot_context(results: Dict[str, Any]) -> Tuple[str, Optional[float]]:
    """What the plots' titles and chance lines say: the data evaluated and 100 / classes (when the models agree)."""
    data = ', '.join(dict.fromkeys(str(e.get('data')) for e in results.values())) or 'the data'
    classes = {e.get('num_classes') for e in results.values()}
    return data, (100.0 / classes.pop() if len(classes) == 1 and None not in classes else None)


def _corruption_outputs(results: Dict[str, Any], out: Path) -> List[str]:
    """The corruption table (markdown), a heatmap per model and the family bar chart across models."""
    found = {label: e['corruptions'] for label, e in results.items() if 'corruptions' in e}
    if not found:
        return []
    for label, c in found.items():
        plot_corruption_heatmap(c, out / f'corruptions_{safe_name(label, FILE_CHARS, "_")}.png',
                                f"{label} on {results[label].get('data')}: accuracy (%), {c['num_images']:,} images")
    plot_corruption_families(found, out / 'corruption_families.png', _plot_context(results)[0])
    first = next(iter(found.values()))
    return ['## Common corruptions (CIFAR-10-C constants, computed on the fly)', '',
            f"Accuracy (%) averaged over severities {first['severities']}; {first['num_images']} images, seed "
            f"{first['seed']}.", '', corruption_table(found), '', '![families](corruption_families.png)', '']


def _attack_outputs(results: Dict[str, Any], out: Path) -> List[str]:
    """The robust-accuracy table (markdown) and one accuracy-vs-epsilon plot per norm, models overlaid."""
    found = {label: e['attacks'] for label, e in results.items() if 'attacks' in e}
    if not found:
        return []
    md = ['## Adversarial robustness', '', attack_table(found), '']
    for norm in NORMS:
        if any(norm in r for r in found.values()):
            plot_attacks(found, out / f'attacks_{norm}.png', norm, *_plot_context(results))
            md += [f'![{norm}](attacks_{norm}.png)', '']
    return md

"""``timm-lipschitz eval``: noise sweeps (and optional Lipschitz estimates and certificates) of runs, checkpoint
folders, or registered models with a checkpoint file or their pretrained tag; writes JSON, markdown and plots."""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from .fileio import atomic_write_json, atomic_write_text, read_json

__all__ = ['load_model', 'resolve_device', 'evaluate', 'add_arguments', 'run_from_args']


def load_model(source: Optional[str] = None, model_name: Optional[str] = None, checkpoint: Optional[str] = None,
               pretrained: bool = False) -> Tuple[nn.Module, Dict[str, Any]]:
    """A model and what is known of how it was trained (the run's recipe, if any).

    ``source``: a run folder or checkpoint folder (``config.json`` + ``model.safetensors``).
    ``model_name`` with ``checkpoint`` (a safetensors file) or ``pretrained`` (its registered tag).
    """
    import timm

    from .hub import CheckpointError, load_checkpoint, load_pretrained, read_metadata
    if source is not None:
        folder = Path(source)
        model = load_pretrained(folder)
        recipe = {}
        if (folder / 'recipe.yaml').is_file():
            import yaml
            recipe = yaml.safe_load((folder / 'recipe.yaml').read_text())
        return model, {'label': recipe.get('name') or folder.name, 'recipe': recipe,
                       'metadata': read_metadata(folder)}
    if model_name is None:
        raise ValueError('give a run/checkpoint folder, or --model NAME with --checkpoint PATH or --pretrained.')
    if checkpoint is not None:
        meta = read_metadata(checkpoint)
        model = timm.create_model(model_name, pretrained=False,
                                  num_classes=int(meta.get('num_classes') or 10),
                                  **_args_beside(checkpoint))
        load_checkpoint(model, checkpoint)
        return model, {'label': Path(checkpoint).stem if Path(checkpoint).stem != 'model' else model_name,
                       'recipe': {}, 'metadata': meta}
    if pretrained:
        cfg = timm.models.get_pretrained_cfg(model_name)
        if cfg is None or not (cfg.file or cfg.hf_hub_id or cfg.url):
            raise CheckpointError(f'{model_name!r} has no pretrained weights; registered tags with weights: '
                                  f'{timm.list_pretrained(model_name.split(".")[0] + "*")}.')
        model = timm.create_model(model_name, pretrained=True)
        return model, {'label': model_name, 'recipe': {}, 'metadata': {}}
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


def _data_for(model: nn.Module, info: Dict[str, Any], data: Optional[str], root: Optional[str],
              input_size: Optional[Sequence[int]], split: str, max_images: Optional[int]):
    from .data import check_labels, create_dataset
    recipe_data = info['recipe'].get('data', {})
    name = data or recipe_data.get('name') or info['metadata'].get('dataset')
    if not name:
        raise ValueError('which data? give --data NAME (the model carries no record of its training data).')
    size = tuple(input_size) if input_size else tuple(model.pretrained_cfg['input_size'])
    kwargs = recipe_data.get('kwargs', {}) if name == recipe_data.get('name') else {}
    ds, dinfo = create_dataset(name, split, root=root or recipe_data.get('root'), input_size=size, **kwargs)
    if dinfo.num_classes > model.num_classes:
        raise ValueError(f'{name} has {dinfo.num_classes} classes but the model has num_classes='
                         f'{model.num_classes}; evaluate it on data with at most {model.num_classes} classes.')
    if hasattr(ds, 'labels'):
        check_labels(ds.labels, model.num_classes, f'{name}/{split}')
    if max_images is not None and max_images < len(ds):
        ds = torch.utils.data.Subset(ds, list(range(max_images)))
    return ds, name


def evaluate(models: List[Tuple[nn.Module, Dict[str, Any]]], out_dir: str, data: Optional[str] = None,
             root: Optional[str] = None, input_size: Optional[Sequence[int]] = None, split: str = 'test',
             sigmas: Any = None, repeats: int = 1, seed: int = 0, clip: bool = False, quantize: bool = False,
             batch_size: int = 256, max_images: Optional[int] = None, mean=None, std=None,
             lipschitz: bool = False, certify: bool = False, certify_args: Optional[Dict[str, Any]] = None,
             demo: bool = False, progress: bool = True, device: str = 'cpu') -> Dict[str, Any]:
    """Evaluate each model on its data; write ``eval.json``, ``eval.md``, ``eval.png`` (and more) in ``out_dir``.

    The noise sweep runs on ``device``; the optional extras (Lipschitz estimates, certificates, the demo grid) run
    on the CPU, where their per-image loops are written to run.
    """
    from .robustness import noise_sweep, plot_sweeps, summary_table, sweep_table, unique_label
    sweep_device = resolve_device(device)
    out = Path(out_dir)
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
        if lipschitz or certify:
            from .robustness.certify import extra_evaluations
            hp = json.loads(info['metadata'].get('hparams', '{}') or '{}')
            entry.update(extra_evaluations(model, ds, out, label, lipschitz=lipschitz, certify=certify,
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
    atomic_write_json(out / 'eval.json', results)
    md = ['# Noise-robustness evaluation', '', summary_table(sweeps), '', sweep_table(sweeps), '']
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
    return results


def _floats(text: Optional[str]) -> Optional[List[float]]:
    return [float(x) for x in text.split(',')] if text else None


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument('sources', nargs='*', help='run folders or checkpoint folders (several give one overlaid plot)')
    p.add_argument('--model', help='registered model name (with --checkpoint or --pretrained)')
    p.add_argument('--checkpoint', help='safetensors file for --model')
    p.add_argument('--pretrained', action='store_true', help='use the registered pretrained tag of --model')
    p.add_argument('--data', help='dataset name (default: the one the run was trained on)')
    p.add_argument('--data-root')
    p.add_argument('--input-size', help='C,H,W (default: the model\'s pretrained_cfg input_size)')
    p.add_argument('--split', default='test', choices=('train', 'test'))
    p.add_argument('--sigmas', default=None,
                   help="'start:stop:step' (stop included), a comma list, or 'cifar10c_gaussian' (default 0:0.5:0.01)")
    p.add_argument('--preset', choices=('paper', 'mnist', 'cifar10c_gaussian'),
                   help='paper: 0..0.5; mnist: 0..1.0; cifar10c_gaussian: CIFAR-10-C severities, clipped, uint8')
    p.add_argument('--repeats', type=int, default=1)
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--clip', action='store_true', help='clip noisy images to [0,1]')
    p.add_argument('--batch-size', type=int, default=256)
    p.add_argument('--max-images', type=int)
    p.add_argument('--mean', help='normalization mean for models without pretrained_cfg (comma list)')
    p.add_argument('--std', help='normalization std (comma list)')
    p.add_argument('--lipschitz', action='store_true', help='k(x) statistics, PGD lower bound, spectral upper bound')
    p.add_argument('--certify', action='store_true', help='randomized smoothing certificates (Cohen et al.)')
    p.add_argument('--certify-sigma', type=float, default=0.25)
    p.add_argument('--n0', type=int, default=100)
    p.add_argument('--n', type=int, default=1000)
    p.add_argument('--alpha', type=float, default=0.001)
    p.add_argument('--certify-images', type=int, default=100)
    p.add_argument('--demo', action='store_true', help="the paper's Table 1: one image at sigma 0..0.6")
    p.add_argument('--out', default='eval_out', help='output folder')
    p.add_argument('--device', default='auto',
                   help='where the noise sweep runs: auto (CUDA if available), cpu, cuda or cuda:N; '
                        '--lipschitz/--certify/--demo run on the CPU')
    p.add_argument('--no-progress', action='store_true')


def run_from_args(args: argparse.Namespace) -> Dict[str, Any]:
    from .robustness.noise import CIFAR10C_GAUSSIAN, MNIST_SIGMAS, PAPER_SIGMAS
    resolve_device(args.device)  # a bad --device fails before any model or data is loaded
    models = [load_model(s) for s in args.sources]
    if args.model:
        models.append(load_model(model_name=args.model, checkpoint=args.checkpoint, pretrained=args.pretrained))
    if not models:
        raise ValueError('nothing to evaluate: give run folders, or --model NAME with --checkpoint/--pretrained.')
    sigmas, clip, quantize = args.sigmas, args.clip, False
    if args.preset == 'cifar10c_gaussian' or args.sigmas == 'cifar10c_gaussian':
        sigmas, clip, quantize = list(CIFAR10C_GAUSSIAN), True, True
    elif args.preset == 'mnist':
        sigmas = list(MNIST_SIGMAS)
    elif args.preset == 'paper':
        sigmas = list(PAPER_SIGMAS)
    size = [int(x) for x in args.input_size.split(',')] if args.input_size else None
    results = evaluate(models, args.out, data=args.data, root=args.data_root, input_size=size, split=args.split,
                       sigmas=sigmas, repeats=args.repeats, seed=args.seed, clip=clip, quantize=quantize,
                       batch_size=args.batch_size, max_images=args.max_images, mean=_floats(args.mean),
                       std=_floats(args.std), lipschitz=args.lipschitz, certify=args.certify,
                       certify_args=dict(sigma=args.certify_sigma, n0=args.n0, n=args.n, alpha=args.alpha,
                                         num_images=args.certify_images),
                       demo=args.demo, progress=not args.no_progress, device=args.device)
    print((Path(args.out) / 'eval.md').read_text())
    print(f'wrote {args.out}/eval.json, eval.md, eval.png')
    return results

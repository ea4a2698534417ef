"""The deterministic-certificate study: for each finished run, clean and certified accuracy on the whole test split
from the same checkpoint, training accuracy, the radius rule that certified each image, the training time from
``final.json``, and the soundness check (declared constants against the effective weights).

    python benchmarks/certified_study.py NAME LABEL=RUN_FOLDER [LABEL=RUN_FOLDER ...] [--reference-1nn] [--add]

Each row evaluates the run's evaluation form (the plain export) with :func:`timm_lipschitz.certificates.
dataset_certificate`, the function ``eval --certify`` runs. ``--reference-1nn`` adds two rows that need no network:
a nearest-neighbour classifier on the training split, certified by the distance from each test image to the
bisector between its nearest training image and every training image of another class (a sound radius: within it
the nearest neighbour keeps its class), and the simpler half-gap bound (d_other - d_same) / 2. They show what the
data's geometry allows in [0,1] pixel space.

Writes ``<NAME>.json``, ``<NAME>.md`` and ``<NAME>.png`` (certified accuracy at l2 0.5 against epochs and against
training time; the runs that differ only in length joined by a line) into benchmarks/out/ (benchmarks/results/
under UPDATE_RESULTS=1).
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

import torch
from matplotlib import colormaps

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import timm_lipschitz  # noqa: E402,F401
from timm_lipschitz import certificates as C  # noqa: E402
from timm_lipschitz.data import create_dataset  # noqa: E402
from timm_lipschitz.hub import load_model  # noqa: E402
from timm_lipschitz.modes import for_evaluation  # noqa: E402
from timm_lipschitz.robustness.report import save_figure, subplots  # noqa: E402

from _results import OUT, read_results, write_results  # noqa: E402

RADII = (0.0, 0.25, 0.5, 1.0)


def _split(name: str, split: str, size) -> torch.utils.data.Dataset:
    return create_dataset(name, split, input_size=size)[0]


def portable(source: str) -> str:
    """A run folder as its grid names it (``runs/sweeps/<grid>/<point>``, the same in any checkout), a tag as is:
    the results hold no machine's paths."""
    parts = Path(source).parts
    return str(Path(*parts[parts.index('runs'):])) if 'runs' in parts else source


def run_row(source: str) -> Dict[str, Any]:
    """Every number of one run's row (module doc); a shipped tag (no run folder) has no training time."""
    model, info = load_model(source)
    runner = for_evaluation(model)
    decl = C.declaration(runner)
    recipe = info['recipe']
    size = tuple(runner.pretrained_cfg['input_size'])
    data = (recipe.get('data') or {}).get('name') or info['metadata'].get('dataset')
    test, train = _split(data, 'test', size), _split(data, 'train', size)
    t = time.time()
    cert = C.dataset_certificate(runner, test, decl, radii_=RADII)
    seconds = time.time() - t
    fit = C.dataset_certificate(runner, train, decl, radii_=(0.0, 0.5))
    sound = C.check_declared(runner, test, decl)
    final_json = Path(source) / 'final.json'
    final = json.loads(final_json.read_text()) if final_json.is_file() else {}
    hparams = json.loads(info['metadata'].get('hparams', '{}') or '{}')
    loss = dict(recipe.get('loss') or {'name': info['metadata'].get('objective'), **hparams})
    return {'folder': portable(source), 'model': runner.pretrained_cfg.get('architecture'),
            'model_args': (recipe.get('model') or {}).get('kwargs', {}),
            'loss': loss, 'epochs': final.get('epochs'), 'parameters': sum(p.numel() for p in model.parameters()),
            'clean': cert['certified_accuracy'][0], 'certified': dict(zip(map(str, RADII[1:]),
                                                                          cert['certified_accuracy'][1:])),
            'rules': cert['rules'], 'train_clean': fit['certified_accuracy'][0],
            'train_certified_0.5': fit['certified_accuracy'][1], 'test_images': cert['num_images'],
            'train_time_s': final.get('train_time_s'), 'threads': final.get('threads'),
            'images_per_s': final.get('images_per_s'), 'certify_seconds': seconds,
            'soundness': {k: sound[k] for k in ('passed', 'declared', 'declared_body', 'jacobian_norm_max',
                                                 'pgd_lower_bound_max', 'effective_layer_bound')}}


def nearest_neighbour_rows(data: str = 'fashion_mnist', size=(1, 28, 28)) -> List[Dict[str, Any]]:
    """The 1-NN references (module doc), on the whole test split against the whole training split."""
    def tensors(ds):
        xs, ys = zip(*[ds[i] for i in range(len(ds))])
        return torch.stack(xs).flatten(1).double(), torch.tensor(ys)
    xtr, ytr = tensors(_split(data, 'train', size))
    xte, yte = tensors(_split(data, 'test', size))
    sq = (xtr ** 2).sum(1)
    bisector, half, correct = [], [], []
    for i in range(0, len(xte), 250):
        x = xte[i:i + 250]
        d2 = ((x ** 2).sum(1, keepdim=True) + sq[None] - 2 * x @ xtr.T).clamp_min(0)
        nn = d2.argmin(1)
        pred = ytr[nn]
        correct.append(pred == yte[i:i + 250])
        other = ytr[None] != pred[:, None]
        s = xtr[nn]
        zs = ((s ** 2).sum(1, keepdim=True) + sq[None] - 2 * s @ xtr.T).clamp_min(0).sqrt()
        ds2 = d2.gather(1, nn[:, None])
        bisector.append(((d2 - ds2) / (2 * zs.clamp_min(1e-12))).masked_fill(~other, float('inf')).min(1).values)
        d_other = d2.masked_fill(~other, float('inf')).min(1).values.sqrt()
        half.append((d_other - ds2.squeeze(1).sqrt()) / 2)
    ok = torch.cat(correct)
    rows = []
    for label, r in (('1-NN, bisector radius', torch.cat(bisector)), ('1-NN, half-gap radius', torch.cat(half))):
        acc = [100.0 * (ok & (r >= t)).double().mean().item() for t in RADII]
        rows.append({'label': label, 'clean': acc[0], 'certified': dict(zip(map(str, RADII[1:]), acc[1:])),
                     'test_images': len(ok)})
    return rows


def markdown(rows: Dict[str, Dict[str, Any]], header: str) -> str:
    lines = [header, '', '| model | clean | certified l2 0.25 | certified l2 0.5 | certified l2 1 | train clean | '
             'per-pair / whole-model radii | training s (threads) | parameters |',
             '|---|---|---|---|---|---|---|---|---|']
    for label, r in rows.items():
        cert = r['certified']
        rules = r.get('rules')
        lines.append(f"| {label} | {r['clean']:.2f} | {cert['0.25']:.2f} | {cert['0.5']:.2f} | {cert['1.0']:.2f} | "
                     + (f"{r['train_clean']:.2f}" if 'train_clean' in r else '–') + ' | '
                     + (f"{rules['per_pair']:,} / {rules['whole_model']:,}" if rules else '–') + ' | '
                     + (f"{r['train_time_s']:.0f} ({r['threads']})" if r.get('train_time_s') else '–') + ' | '
                     + (f"{r['parameters']:,}" if r.get('parameters') else '–') + ' |')
    return '\n'.join(lines) + '\n'


def series(rows: Dict[str, Dict[str, Any]]) -> Dict[str, List[str]]:
    """The trained rows grouped by everything but their length (model, its arguments, the objective): one line in
    the plot per group, its points in order of epochs."""
    groups: Dict[str, List[str]] = {}
    for label, r in rows.items():
        if r.get('epochs') and r.get('train_time_s'):
            key = json.dumps([r['model'], r['model_args'], r['loss']], sort_keys=True)
            groups.setdefault(key, []).append(label)
    return {' / '.join(labels): sorted(labels, key=lambda k: rows[k]['epochs']) for labels in groups.values()}


def plot(rows: Dict[str, Dict[str, Any]], path: Path, radius: str = '0.5') -> Path:
    """Certified accuracy at ``radius`` against epochs (left) and training seconds (right), one line per series."""
    fig, axes = subplots(1, 2, figsize=(11, 4.2))
    for i, (name, labels) in enumerate(series(rows).items()):
        ys = [rows[k]['certified'][radius] for k in labels]
        style = {'marker': 's' if rows[labels[0]]['model'] == 'lip_mlp' else 'o', 'color': colormaps['tab20'](i % 20),
                 'label': name if len(labels) > 1 else labels[0]}
        for ax, x in zip(axes, ('epochs', 'train_time_s')):
            ax.plot([rows[k][x] for k in labels], ys, **style)
    ylabel = f'certified accuracy at l2 {radius} (%)'
    axes[0].set_xlabel('epochs')
    axes[0].set_ylabel(ylabel)
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=6)  # twelve series: smaller than save_figure's legend
    return save_figure(fig, axes[1], path, 'training seconds (one thread, as final.json records)', ylabel,
                       legend=False)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('name')
    p.add_argument('runs', nargs='*', help='LABEL=RUN_FOLDER')
    p.add_argument('--reference-1nn', action='store_true')
    p.add_argument('--add', action='store_true', help="keep the rows of NAME's last results and add these")
    args = p.parse_args()
    t0 = time.time()
    earlier = read_results(args.name) if args.add else {'rows': {}}
    rows: Dict[str, Dict[str, Any]] = earlier['rows']
    before = set(rows)
    for spec in args.runs:
        label, folder = spec.split('=', 1)
        rows[label] = run_row(folder)
        print(label, rows[label]['clean'], rows[label]['certified'], flush=True)
    if args.reference_1nn:
        for r in nearest_neighbour_rows():
            rows[r.pop('label')] = r
    run = (f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} "
           f"thread(s); {time.time() - t0:.0f} s; {time.strftime('%Y-%m-%d')}")
    header = (f"{earlier['header']} Added: {', '.join(r for r in rows if r not in before)} ({run})." if args.add else
              f"Fashion-MNIST test split (10,000 images), accuracy %; {run}.")
    write_results(args.name, {'header': header, 'rows': rows, 'series': series(rows)}, markdown(rows, header))
    plot(rows, OUT / f'{args.name}.png')


if __name__ == '__main__':
    main()

"""Beyond Gaussian noise: the common corruptions of CIFAR-10-C and L2 / L-inf attacks on the same models, with the
per-image 95% Wilson interval of every score (each model is one training seed).

    python benchmarks/robustness_study.py NAME MODEL [MODEL ...] [--data fashion_mnist] [--images 1000]
        [--attack-images 500] [--black-box-images 100] [--autoattack-images 0] [--autoattack-eps linf=0.1 l2=1]
        [--skip-corruptions] [--skip-attacks] [--eps l2=0.5,1 linf=0.1] [--sigmas 0,0.3,0.5] [--lipschitz]
    python benchmarks/robustness_study.py NAME --render      # NAME.md again from NAME.json, nothing evaluated
    python benchmarks/robustness_study.py NAME --merge [LABEL=]PART ...   # NAME from runs made side by side

MODEL is a run folder or a registered tag (``cifar_resnet20.lipschitz_hinge_s050_b1_l001_fmnist``), optionally
labelled ``label=MODEL``. Writes benchmarks/results/NAME/ (the eval outputs: eval.json, eval.md, heatmaps, family
bars, attack curves) and benchmarks/results/NAME.{json,md} (the study tables), and prints the markdown.
``--autoattack-images N`` adds AutoAttack (ART's ensemble: APGD-CE, APGD-DLR, DeepFool, Square; the worst case
per image, with the images each member broke first) and PGD on the same first N images at ``--autoattack-eps``: AutoAttack below PGD means the PGD screen
overstated robustness there (too few steps, a weak loss, or masked gradients), which the PGD table alone would hide. Slow on a CPU: every image that survives runs every attack, Square's 5,000
queries × 5 restarts included (8 digits images, two ResNet-20s, three epsilons: 15 min on one thread);
``--autoattack-square-restarts 1`` runs Square as Croce & Hein's standard version does, about 5x cheaper. ``--eps`` narrows the PGD
grid, ``--sigmas`` adds Gaussian-noise accuracy on the corruption images and ``--lipschitz`` the sampled and
PGD-found k(x); with them NAME.md opens with one summary row per model (training time read from a run folder's
final.json).
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

import timm_lipschitz  # noqa: E402,F401
from timm_lipschitz.certificates import eval_entry  # noqa: E402
from timm_lipschitz.evaluate import evaluate, load_model  # noqa: E402
from timm_lipschitz.robustness.attacks import parse_eps  # noqa: E402
from timm_lipschitz.robustness.certify import max_certified_radius  # noqa: E402
from timm_lipschitz.robustness.corruptions import CORRUPTIONS, FAMILIES, MISSING  # noqa: E402
from timm_lipschitz.protocol import wilson_interval  # noqa: E402

from _results import OUT, read_results, write_results  # noqa: E402  (benchmarks/_results.py, beside this script)


def _load(spec: str) -> Tuple[Any, Dict[str, Any]]:
    label, _, source = spec.rpartition('=')
    model, info = load_model(source) if Path(source).exists() else load_model(model_name=source, pretrained=True)
    info['label'] = label or info['label']
    return model, info


def _final(spec: str) -> Dict[str, Any]:
    """A run folder's final.json (empty for a tag)."""
    final = Path(spec.rpartition('=')[2]) / 'final.json'
    return json.loads(final.read_text()) if final.is_file() else {}


def _train_time(spec: str) -> Any:
    """Training seconds of a run folder (its final.json), None for a tag."""
    return _final(spec).get('train_time_s')


def _ci(acc: float, n: int) -> str:
    lo, hi = wilson_interval(acc, n)
    return f'{acc:.1f} [{lo:.1f}, {hi:.1f}]'


def _cell(value: Any, digits: int = 1) -> str:
    return '–' if value is None else f'{value:.{digits}f}'


def _deterministic(r: Dict[str, Any], radius: float) -> float:
    """Deterministic certified accuracy (%) at ``radius``, from the per-image radii of the margin certificate."""
    radii = eval_entry(r)['radius']
    return 100.0 * sum(1 for v in radii if v >= radius) / len(radii)


def summary_table(results: Dict[str, Any]) -> List[str]:
    """One row per model: every headline measurement the study holds (accuracy %, k(x) in logits per unit L2)."""
    cols: List[Tuple[str, Any]] = []
    first = next(iter(results.values()))
    for sigma in first.get('sweep', {}).get('sigmas', [])[1:]:
        cols.append((f'σ {sigma:g}', lambda r, s=sigma: r['sweep']['accuracy'][r['sweep']['sigmas'].index(s)]))
    if 'corruptions' in first:
        cols.append(('corruption mean', lambda r: r['corruptions']['mean']))
    for norm in ('l2', 'linf'):
        for e in first.get('attacks', {}).get(norm, {}):
            cols.append((f'PGD {norm} {e}', lambda r, n=norm, e=e: r['attacks'][n][e]))
    for norm in ('l2', 'linf'):
        for e in first.get('autoattack', {}).get(norm, {}):
            cols.append((f'AutoAttack {norm} {e}', lambda r, n=norm, e=e: r['autoattack'][n][e]))
    if eval_entry(first) is not None:
        for e in first.get('attacks', {}).get('l2', {}):
            cols.append((f'deterministic certified l2 {e}', lambda r, e=e: _deterministic(r, float(e))))
    for e, v in first.get('attacks', {}).get('smoothing', {}).get('l2', {}).items():
        if v is not None:
            cols.append((f'smoothing certified l2 {e}', lambda r, e=e: r['attacks']['smoothing']['l2'][e]))
    lip = first.get('lipschitz', {})
    for key in [k for k in lip if k.startswith('k_sigma_')]:
        cols.append((f'sampled k(x) mean, σ {key[8:]}', (lambda r, k=key: r['lipschitz'][k]['mean'], 3)))
    if 'pgd_lower_bound' in lip:
        cols.append((f"PGD-found k(x) max, radius {lip['pgd_lower_bound'].get('radius', 0.5):g}",
                     (lambda r: r['lipschitz']['pgd_lower_bound']['max'], 2)))
    if any(r.get('train_time_s') is not None for r in results.values()):
        cols.append(('training s', (lambda r: r.get('train_time_s'), 0)))
    if any(r.get('train_images_per_s') is not None for r in results.values()):
        cols.append(('training images/s', (lambda r: r.get('train_images_per_s'), 0)))
    head = ['model', 'clean'] + [c[0] for c in cols]
    lines = ['| ' + ' | '.join(head) + ' |', '|---' * len(head) + '|']
    for label, r in results.items():
        clean = r['sweep']['accuracy'][0] if 'sweep' in r else r.get('corruptions', {}).get('clean')
        cells = [label, _cell(clean)]
        for _, get in cols:
            fn, digits = get if isinstance(get, tuple) else (get, 1)
            try:
                cells.append(_cell(fn(r), digits))
            except (KeyError, ValueError, IndexError):
                cells.append('n/a')
        lines.append('| ' + ' | '.join(cells) + ' |')
    return lines


def corruption_tables(results: Dict[str, Any]) -> List[str]:
    labels = list(results)
    n = {k: r['corruptions']['num_images'] for k, r in results.items()}
    head = '| corruption | family | ' + ' | '.join(labels) + ' |\n|---|---|' + '---|' * len(labels)
    rows = [head]
    for name in CORRUPTIONS:
        if name in MISSING:
            continue
        rows.append(f'| {name} | {CORRUPTIONS[name][0]} | ' + ' | '.join(
            _ci(results[k]['corruptions'][name]['mean'], n[k]) for k in labels) + ' |')
    for f in FAMILIES:
        rows.append(f'| *{f}* | | ' + ' | '.join(f"{results[k]['corruptions']['by_family'][f]:.1f}" for k in labels)
                    + ' |')
    rows.append('| **mean corruption accuracy** | | ' + ' | '.join(
        f"**{results[k]['corruptions']['mean']:.1f}**" for k in labels) + ' |')
    rows.append('| clean | | ' + ' | '.join(_ci(results[k]['corruptions']['clean'], n[k]) for k in labels) + ' |')
    severity = ['| corruption, severity 5 | ' + ' | '.join(labels) + ' |', '|---|' + '---|' * len(labels)]
    for name in CORRUPTIONS:
        if name not in MISSING:
            severity.append(f'| {name} | ' + ' | '.join(_ci(results[k]['corruptions'][name]['5'], n[k])
                                                         for k in labels) + ' |')
    return ['### Mean over severities 1-5 (accuracy %, [95% Wilson interval of each severity-mean over the '
            'images])', '', '\n'.join(rows), '', '### Severity 5', '', '\n'.join(severity)]


def attack_tables(results: Dict[str, Any]) -> List[str]:
    labels = [k for k in results if 'attacks' in results[k]]
    if not labels:
        return []
    first = results[labels[0]]['attacks']
    lines = [f"### {first['method']}", '', '| norm | ε | ' + ' | '.join(labels) + ' |',
             '|---|---|' + '---|' * len(labels),
             '| clean | 0 | ' + ' | '.join(_ci(results[k]['attacks']['clean'], results[k]['attacks']['num_images'])
                                         for k in labels) + ' |']
    for norm in ('linf', 'l2'):
        for e in first.get(norm, {}):
            lines.append(f'| {norm} | {e} | ' + ' | '.join(
                _ci(results[k]['attacks'][norm][e], results[k]['attacks']['num_images']) for k in labels) + ' |')
    if 'smoothing' in first:
        s = first['smoothing']
        lines += ['', f"Randomized smoothing (σ {s['sigma']:g}, n {s['n']}, α {s['alpha']:g}, {s['num_images']} "
                      f"images): certified accuracy at the same L2 radii (–: beyond the largest radius these "
                      f"settings can certify, σ Φ⁻¹(α^(1/n)) = {s.get('max_radius', float('nan')):.3f})", '',
                  '| radius | ' + ' | '.join(labels) + ' |', '|---|' + '---|' * len(labels)]
        for e in s['l2']:
            cells = [results[k]['attacks']['smoothing']['l2'][e] for k in labels]
            lines.append(f'| {e} | ' + ' | '.join('–' if c is None else _ci(c, s['num_images']) for c in cells)
                         + ' |')
    boxes = [(k, r['attacks']['black_box']) for k, r in results.items() if 'black_box' in r.get('attacks', {})]
    if boxes:
        lines += ['', f"Black-box check on the first {boxes[0][1]['images']} images: robust accuracy under the "
                      f"gradient-free Square Attack vs under {first['attack']} on the same images (Square lower: "
                      f"the gradients mislead the attack)", '']
        for k, b in boxes:
            parts = [f"{n} {e}: Square {b['square'][n][e]:.1f} vs {b['gradient'][n][e]:.1f}"
                     for n in b['square'] for e in b['square'][n]]
            lines.append(f'- {k}: ' + '; '.join(parts))
    lines += ['', 'Gradient-masking checks:']
    for k in labels:
        w = results[k]['attacks']['warnings']
        lines.append(f"- {k}: {'; '.join(w) if w else 'none raised (accuracy falls with ε, about 0 at a very large ε)'}")
    return lines


def autoattack_table(results: Dict[str, Any]) -> List[str]:
    """AutoAttack against PGD on the same images and epsilons: equal means PGD found what there was to find."""
    labels = [k for k in results if 'autoattack' in results[k]]
    if not labels:
        return []
    first = results[labels[0]]['autoattack']
    lines = [f"AutoAttack: {first['method']}; against {first['pgd_method']}, on {first['num_images']} test images (a "
             'stratified prefix of the evaluation order; robust accuracy %, AutoAttack / PGD, [95% Wilson interval '
             'of AutoAttack])', '',
             '| norm | ε | ' + ' | '.join(labels) + ' |', '|---|---|' + '---|' * len(labels)]
    for norm in ('linf', 'l2'):
        for e in first.get(norm, {}):
            cells = []
            for k in labels:
                a = results[k]['autoattack']
                lo, hi = wilson_interval(a[norm][e], a['num_images'])
                cells.append(f"{a[norm][e]:.1f} / {a['pgd'][norm][e]:.1f} [{lo:.1f}, {hi:.1f}]")
            lines.append(f'| {norm} | {e} | ' + ' | '.join(cells) + ' |')
    broken = [k for k in labels if results[k]['autoattack'].get('broken_by')]
    if broken:
        members = _members(results, broken)
        lines += ['', 'Images each AutoAttack member broke first (the members run in this order on the images still '
                  'standing):', '', '| model | norm | ε | ' + ' | '.join(members) + ' |',
                  '|---|---|---|' + '---|' * len(members)]
        for k in broken:
            for norm, by_eps in results[k]['autoattack']['broken_by'].items():
                for e, counts in by_eps.items():
                    lines.append(f'| {k} | {norm} | {e} | ' + ' | '.join(str(counts.get(m, '–')) for m in members)
                                 + ' |')
    return lines


def _members(results: Dict[str, Any], labels: List[str]) -> List[str]:
    """AutoAttack's members in the order they ran (the first model's record)."""
    first = next(iter(results[labels[0]]['autoattack']['broken_by'].values()))
    return list(next(iter(first.values())))


def merge(name: str, parts: List[str]) -> None:
    """NAME from the saved results of several runs of this script, e.g. one AutoAttack run per model made side by
    side, added to an earlier study (NAME itself may be a part: it is read before it is written).

    Rows are matched by label, in the order first seen; a part's row adds its measurements to the row. ``LABEL=PART``
    gives a one-row part's row that label (the same run measured under another study's name). A measurement that two
    parts give for the same row is refused rather than silently overwritten."""
    results: Dict[str, Any] = {}
    headers = []
    for spec in parts:
        label, _, part = spec.rpartition('=')
        saved = read_results(part)
        rows = saved['results']
        if label:
            if len(rows) != 1:
                raise SystemExit(f'--merge {spec}: {part} holds {len(rows)} rows; a label renames a one-row part.')
            rows = {label: next(iter(rows.values()))}
        for row_label, row in rows.items():
            entry = results.setdefault(row_label, {})
            clash = sorted(set(entry) & set(row))
            if clash:
                raise SystemExit(f'--merge: {part} gives {clash} of the row {row_label!r} again; nothing merged.')
            entry.update(row)
        headers.append(f"{part}: {saved['header']}")
    save(name, f'Merged from {len(parts)} runs of robustness_study.py. ' + ' '.join(headers), results)


def _what_ran(args: argparse.Namespace) -> str:
    """The images of each measurement that ran, and only those (a skipped one is not described as if it had run)."""
    ran = []
    if not args.skip_corruptions:
        ran.append(f'{args.images} images for noise and the corruptions')
    if not args.skip_attacks:
        ran.append(f'{args.attack_images} for PGD')
        if args.black_box_images:
            ran.append(f'the first {args.black_box_images} for Square')
    if not args.skip_attacks or args.certify:
        ran.append(f'{args.certify_images} for smoothing')
    if args.autoattack_images:
        ran.append(f'the first {args.autoattack_images} for AutoAttack and for PGD on the same images')
    return ', '.join(ran) or 'nothing measured'


def add_autoattack(results: Dict[str, Any], models, out: Path, images: int, eps: Dict[str, List[float]],
                   steps: int, common: Dict[str, Any], square_restarts: Any = None) -> None:
    """AutoAttack and PGD on the same first ``images`` images, into ``results[label]['autoattack']``."""
    restarts = {'autoattack': {'square_restarts': square_restarts} if square_restarts else {}, 'pgd': {}}
    runs = {m: evaluate(models, str(out / m), max_images=images,
                        attacks=dict(method=m, norms=list(eps), eps=eps, max_images=images, steps=steps,
                                     smoothing=False, **restarts[m]), **common)
            for m in ('autoattack', 'pgd')}
    for label in runs['autoattack']:
        a, p = runs['autoattack'][label]['attacks'], runs['pgd'][label]['attacks']
        entry = results.setdefault(label, {})
        entry['autoattack'] = {'method': a['method'], 'pgd_method': p['method'], 'num_images': a['num_images'],
                               'clean': a['clean'], 'warnings': a['warnings'], 'broken_by': a.get('broken_by', {}),
                               'pgd': {n: p[n] for n in eps}, **{n: a[n] for n in eps}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('name')
    p.add_argument('models', nargs='*')
    p.add_argument('--data', default='fashion_mnist')
    p.add_argument('--images', type=int, default=1000, help='test images for the corruptions')
    p.add_argument('--attack-images', type=int, default=500)
    p.add_argument('--attack-steps', type=int, default=20)
    p.add_argument('--black-box-images', type=int, default=100,
                   help='images for the Square-attack check (a second, smaller PGD run on the same images)')
    p.add_argument('--certify-images', type=int, default=100)
    p.add_argument('--autoattack-images', type=int, default=0,
                   help='images for AutoAttack vs PGD on the same images (0: skip; slow on a CPU)')
    p.add_argument('--autoattack-eps', nargs='+', default=['linf=0.1', 'l2=1'],
                   help='NORM=EPS[,EPS] per norm for the AutoAttack comparison')
    p.add_argument('--autoattack-square-restarts', type=int, default=None,
                   help="restarts of AutoAttack's Square member (ART's default 5; Croce & Hein's standard version 1)")
    p.add_argument('--eps', nargs='+', metavar='NORM=LIST', help='PGD epsilons per norm (default: the library grid)')
    p.add_argument('--sigmas', default='0', help='Gaussian-noise levels on the corruption images, e.g. 0,0.3,0.5')
    p.add_argument('--lipschitz', action='store_true', help='sampled and PGD-found k(x) (1,000 / 128 images)')
    p.add_argument('--certify', action='store_true',
                   help="the deterministic certificate (each model's declared Lipschitz constant, soundness-checked) "
                        'beside smoothing, on the first 1,000 images; its columns at the attacked l2 radii')
    p.add_argument('--skip-corruptions', action='store_true')
    p.add_argument('--skip-attacks', action='store_true')
    p.add_argument('--render', action='store_true', help='only re-render NAME.md from NAME.json')
    p.add_argument('--merge', nargs='+', metavar='PART',
                   help='only write NAME from the saved results of these runs (their rows in this order)')
    args = p.parse_args()
    if args.render:
        return render(args.name)
    if args.merge:
        return merge(args.name, args.merge)
    aa_eps = {k: v for text in args.autoattack_eps for k, v in parse_eps(text, '--autoattack-eps').items()}
    if '*' in aa_eps:
        p.error('--autoattack-eps: name the norm of each epsilon list, e.g. linf=0.1 l2=1')
    if not args.models:
        p.error('give at least one MODEL (a run folder or a registered tag)')
    models = [_load(m) for m in args.models]
    out = OUT / args.name
    t0 = time.time()
    eps = {k: v for text in args.eps or [] for k, v in parse_eps(text, '--eps').items()}
    common = dict(data=args.data, sigmas=[0.0], progress=False, device='auto', record=False,
                  certify_args={'sigma': 0.25, 'n0': 100, 'n': 1000, 'alpha': 0.001,
                                'num_images': args.certify_images})
    results: Dict[str, Any] = {}
    if not (args.skip_corruptions and args.skip_attacks):
        attacks = dict(max_images=args.attack_images, steps=args.attack_steps,
                       **(dict(norms=list(eps), eps=eps) if eps else {}))
        results = evaluate(models, str(out), max_images=args.images,
                           corruptions=None if args.skip_corruptions else 'all', lipschitz=args.lipschitz,
                           certify=args.certify,
                           attacks=None if args.skip_attacks else attacks,
                           **{**common, 'sigmas': [float(x) for x in args.sigmas.split(',')]})
    if args.black_box_images and not args.skip_attacks:
        boxed = evaluate(models, str(out / 'black_box'), max_images=args.black_box_images,
                         attacks=dict(max_images=args.black_box_images, steps=args.attack_steps, black_box=True,
                                      smoothing=False),
                         **common)
        for label, entry in boxed.items():  # the gradient attack and Square on the same (first) images
            a = entry['attacks']
            results[label]['attacks']['black_box'] = {'images': a['num_images'], 'square': a['square'],
                                                      'gradient': {n: a[n] for n in ('linf', 'l2') if n in a}}
            results[label]['attacks']['warnings'] += [w for w in a['warnings'] if 'Square' in w]
    for spec, label in zip(args.models, results):
        results[label]['train_time_s'] = _train_time(spec)
        results[label]['train_images_per_s'] = _final(spec).get('images_per_s')
    if args.autoattack_images:
        add_autoattack(results, models, out / 'autoattack', args.autoattack_images, aa_eps, args.attack_steps,
                       common, args.autoattack_square_restarts)
    header = (f"Data: {args.data} test split ({_what_ran(args)}). Machine: "
              f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
              f"{torch.get_num_threads()} thread(s); {time.time() - t0:.0f} s; {time.strftime('%Y-%m-%d')}.")
    save(args.name, header, results)


def reachable(results: Dict[str, Any]) -> Dict[str, Any]:
    """Smoothing results written before ``max_radius`` existed get it now (it depends only on σ, n and α), and the
    radii beyond it become None: not certifiable with those settings, rather than a measured 0."""
    for entry in results.values():
        s = entry.get('attacks', {}).get('smoothing')
        if s and 'max_radius' not in s:
            s['max_radius'] = max_certified_radius(s['sigma'], s['n'], s['alpha'])
            s['l2'] = {e: None if float(e) > s['max_radius'] else v for e, v in s['l2'].items()}
    return results


def markdown(name: str, header: str, results: Dict[str, Any]) -> str:
    """NAME.md from the results: each section whose measurements are there."""
    md = [f'# {name}', '', header, '']
    if all('sweep' in r for r in results.values()) and len(next(iter(results.values()))['sweep']['sigmas']) > 1:
        md += ['## Summary', '', '(accuracy %; k(x) in logits per unit L2 of [0,1] pixels)', ''] + \
            summary_table(results) + ['']
    if any('corruptions' in r for r in results.values()):
        md += ['## Common corruptions', ''] + corruption_tables(results) + ['']
    if any('attacks' in r for r in results.values()):
        md += ['## Adversarial attacks', ''] + attack_tables(results) + ['']
    if any('autoattack' in r for r in results.values()):
        md += ['## AutoAttack against PGD', ''] + autoattack_table(results) + ['']
    return '\n'.join(md) + '\n'


def save(name: str, header: str, results: Dict[str, Any]) -> None:
    """NAME.json (header and results, the file --render reads) and NAME.md; prints the markdown."""
    md = markdown(name, header, results)
    write_results(name, {'header': header, 'results': results}, md, default=str)
    print(md, end='')


def render(name: str) -> None:
    """Re-render NAME.md from NAME.json (no evaluation)."""
    saved = read_results(name)
    if 'results' not in saved:  # the first layout: the results alone
        saved = {'header': f'Tables re-rendered on {time.strftime("%Y-%m-%d")} from {name}.json.', 'results': saved}
    save(name, saved['header'], reachable(saved['results']))


if __name__ == '__main__':
    main()

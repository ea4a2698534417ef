"""Does Theorem 1's condition hold for a trained model? For each tag: the radius rho / L_n it would certify, a PGD
lower bound of the local Lipschitz constant of the softmax and of the logits (the worst direction found within
L2 ``--radius``), and the paper's sampled k(x) (random directions at the training sigma) on the same images.

    python benchmarks/lipschitz_bounds.py [TAG ...] [--images 128] [--radius 0.5]

Writes benchmarks/results/lipschitz_bounds.{json,md}. Seconds per tag on a CPU.
"""
from __future__ import annotations

import argparse
import time
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import timm  # noqa: E402
import torch  # noqa: E402

import timm_lipschitz  # noqa: E402,F401
from timm_lipschitz.data import create_dataset  # noqa: E402
from timm_lipschitz.hub import load_robustness  # noqa: E402
from timm_lipschitz.certificates import theorem1_radius  # noqa: E402
from timm_lipschitz.robustness.lipschitz import pgd_lower_bound, sampled_k  # noqa: E402

from _results import write_results  # noqa: E402  (benchmarks/_results.py, beside this script)
TAGS = ['cifar_resnet20.cross_entropy_fmnist', 'cifar_resnet20.lipschitz_hinge_s050_b1_l001_fmnist',
        'cifar_resnet20.lipschitz_hinge_s025_b1_l010_fmnist', 'cifar_resnet20.gaussian_augmentation_s050_fmnist',
        'mnist_convnet.cross_entropy_fmnist', 'mnist_convnet.lipschitz_hinge_s075_b10_l0005_fmnist']


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('tags', nargs='*', default=TAGS)
    p.add_argument('--images', type=int, default=128)
    p.add_argument('--radius', type=float, default=0.5)
    args = p.parse_args()
    rows = []
    t0 = time.time()
    for tag in args.tags:
        model = timm.create_model(tag, pretrained=True).eval()
        meta = load_robustness(tag)
        ds, _ = create_dataset(meta['dataset'], 'test', input_size=model.pretrained_cfg['input_size'])
        sub = torch.utils.data.Subset(ds, range(min(args.images, len(ds))))
        target = meta['hparams'].get('lipschitz_target')
        sigma = float(meta['hparams'].get('sigma', 0.5))  # the training sigma; 0.5 for a model trained without one
        bound = {out: pgd_lower_bound(model, sub, radius=args.radius, output=out, max_images=args.images)['max']
                 for out in ('probs', 'logits')}
        k = sampled_k(model, sub, sigma)
        rows.append({'tag': tag, 'lipschitz_target': target, 'theorem1_radius': target and theorem1_radius(target),
                     'pgd_lower_bound_probs': bound['probs'], 'pgd_lower_bound_logits': bound['logits'],
                     'sampled_k_sigma': sigma, 'sampled_k_mean': k['mean'], 'sampled_k_p95': k['p95'],
                     'images': len(sub), 'radius': args.radius,
                     'condition_holds': None if not target else bound['probs'] <= target})
    lines = [f'# Theorem 1 condition on trained models ({time.strftime("%Y-%m-%d")}, {time.time() - t0:.0f} s, '
             f'torch {torch.__version__}, CPU)', '',
             '| tag | L_n | ρ/L_n | PGD lower bound, softmax / logits | sampled k(x) mean / p95 (σ) | condition |',
             '|---|---|---|---|---|---|']
    for r in rows:
        ln = '–' if not r['lipschitz_target'] else f"{r['lipschitz_target']:g}"
        radius = '–' if not r['theorem1_radius'] else f"{r['theorem1_radius']:.3g}"
        cond = {None: '–', True: 'holds', False: 'fails'}[r['condition_holds']]
        lines.append(f"| `{r['tag']}` | {ln} | {radius} | {r['pgd_lower_bound_probs']:.3f} / "
                     f"{r['pgd_lower_bound_logits']:.3f} | {r['sampled_k_mean']:.4f} / {r['sampled_k_p95']:.4f} "
                     f"({r['sampled_k_sigma']:g}) | {cond} |")
    lines += ['', f"PGD: L2 radius {args.radius}, first {rows[0]['images']} test images; the bound is attained by a "
                  'real pair of inputs, so the condition "softmax is L_n-Lipschitz" fails when it exceeds L_n. The softmax '
                  f'bound cannot exceed √2/radius = {2 ** 0.5 / args.radius:.3f} (two one-hot outputs): a value near it '
                  'is a confident label flip within the radius.']
    write_results('lipschitz_bounds', rows, '\n'.join(lines) + '\n')
    print('\n'.join(lines))


if __name__ == '__main__':
    main()

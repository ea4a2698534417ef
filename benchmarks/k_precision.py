"""How much low precision moves k(x) on trained weights: the per-image Lipschitz estimate of the hinge computed with
the model under autocast (bf16; fp16 too on a GPU) against fp32, same images, same noise. The objective upcasts
the logits and the input difference to float32 before the norms (``losses.base.full_precision``), so what remains
is the forward pass's own rounding, which this measures.

    python benchmarks/k_precision.py [--device cpu|cuda] [--images 1000] [--sigma 0.5] [TAG ...]

Writes benchmarks/results/k_precision_<device>.{json,md}: per tag and dtype, the median and maximum relative
difference of k, and the number of images whose hinge side (k > L_n) flips; each dtype also with the classifier
kept in float32 (``+ fp32 head``), the issue's alternative to upcasting only the norms.
"""
from __future__ import annotations

import argparse
import contextlib
import platform
import sys
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import timm  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

import timm_lipschitz  # noqa: E402,F401
from timm_lipschitz.robustness.subsets import evaluation_subset  # noqa: E402
from timm_lipschitz.data import create_dataset  # noqa: E402
from timm_lipschitz.normalization import Normalizer  # noqa: E402
from timm_lipschitz.hub import load_robustness  # noqa: E402
from timm_lipschitz.losses.lipschitz import lipschitz_ratio  # noqa: E402
from timm_lipschitz.robustness.noise import IndexedDataset, batch_unit_noise  # noqa: E402

from _results import write_results  # noqa: E402  (benchmarks/_results.py, beside this script)
TAGS = ['cifar_resnet20.lipschitz_hinge_s050_b1_l001_fmnist', 'cifar_resnet20.cross_entropy_fmnist']


@contextlib.contextmanager
def head_in_fp32(model) -> Iterator[None]:
    """The classifier runs outside autocast on float32 features (the rest of the network stays low precision)."""
    head = model.get_classifier()
    low = head.forward

    def forward(x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            return low(x.float())
    head.forward = forward
    try:
        yield
    finally:
        del head.forward


@torch.no_grad()
def k_values(model, data, sigma: float, device: torch.device, dtype) -> torch.Tensor:
    """Per-image k(x) with the model's forward under autocast ``dtype`` (None: fp32); noise as in the evaluation."""
    norm = Normalizer(None, None)
    ks = []
    for images, _, index in DataLoader(IndexedDataset(data), batch_size=250):
        delta = sigma * batch_unit_noise(images.shape[1:], 0, index.tolist(), 0)
        images, delta = images.to(device), delta.to(device)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            clean, noisy = model(norm(model, images)), model(norm(model, images + delta))
        ks.append(lipschitz_ratio(clean, noisy, delta).float().cpu())
    return torch.cat(ks)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('tags', nargs='*', default=TAGS)
    p.add_argument('--device', default='cpu')
    p.add_argument('--images', type=int, default=1000)
    p.add_argument('--sigma', type=float, default=0.5)
    args = p.parse_args()
    device = torch.device(args.device)
    dtypes = {'bf16': torch.bfloat16} | ({'fp16': torch.float16} if device.type == 'cuda' else {})
    rows: List[Dict[str, Any]] = []
    t0 = time.time()
    for tag in args.tags:
        model = timm.create_model(tag, pretrained=True).to(device).eval()
        meta = load_robustness(tag)
        ds, _ = create_dataset(meta['dataset'], 'test', input_size=model.pretrained_cfg['input_size'])
        ds = evaluation_subset(ds, args.images)  # a stratified prefix, as timm-lipschitz eval --max-images takes
        ref = k_values(model, ds, args.sigma, device, None)
        target = float(meta['hparams'].get('lipschitz_target') or 0.01)  # the paper's L_n for a model without one
        for name, dtype, fp32_head in [(n, d, h) for n, d in dtypes.items() for h in (False, True)]:
            with head_in_fp32(model) if fp32_head else contextlib.nullcontext():
                low = k_values(model, ds, args.sigma, device, dtype)
            name = name + (' + fp32 head' if fp32_head else '')
            rel = ((low - ref).abs() / ref.clamp_min(1e-12))
            rows.append({'tag': tag, 'dtype': name, 'images': len(ref), 'sigma': args.sigma,
                         'k_mean_fp32': ref.mean().item(), 'k_mean_low': low.mean().item(),
                         'rel_diff_median': rel.median().item(), 'rel_diff_p99': torch.quantile(rel, 0.99).item(),
                         'rel_diff_max': rel.max().item(), 'lipschitz_target': target,
                         'hinge_side_flips': int(((low > target) != (ref > target)).sum())})
    lines = [f'# k(x) under autocast vs fp32 ({device.type}: '
             f"{torch.cuda.get_device_name(device) if device.type == 'cuda' else platform.processor() or platform.machine()}, "
             f'torch {torch.__version__}, {time.strftime("%Y-%m-%d")}, {time.time() - t0:.0f} s)', '',
             '| tag | dtype | images | σ | mean k fp32 / low | rel. diff median / p99 / max | hinge side flips (L_n) |',
             '|---|---|---|---|---|---|---|']
    for r in rows:
        lines.append(f"| `{r['tag']}` | {r['dtype']} | {r['images']} | {r['sigma']:g} | {r['k_mean_fp32']:.4f} / "
                     f"{r['k_mean_low']:.4f} | {r['rel_diff_median']:.2e} / {r['rel_diff_p99']:.2e} / "
                     f"{r['rel_diff_max']:.2e} | {r['hinge_side_flips']} ({r['lipschitz_target']:g}) |")
    write_results(f'k_precision_{device.type}', rows, '\n'.join(lines) + '\n')
    print('\n'.join(lines))


if __name__ == '__main__':
    main()

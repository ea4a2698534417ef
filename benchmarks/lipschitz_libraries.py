"""Which Lipschitz-layer library the 1-Lipschitz models are built on: orthogonium against deel-torchlip, on the same
small net (the shape of ``lip_convnet``, whose layers the orthogonium column uses: three 3x3 convs 1->32->64->64, two
of them strided, a 256-unit dense layer, a 10-class head, pairwise max-min / GroupSort-2 activations), 1x28x28
inputs, batch 128, CPU.

Measured per library, paired in one run (the variants alternate in each repeat; medians reported):
- the training step (forward, backward, SGD) and the eval forward of the parametrized net;
- the eval forward of its export to plain layers (what a cached eval forward costs);
- the largest input-to-logit Jacobian norm found by power iteration at 16 random images: above 1 means the library's
  constraint is not a bound for this net (deel-torchlip's spectral normalization is a power-iteration estimate;
  orthogonium's AOL rescaling is a bound by construction).

    pip install orthogonium deel-torchlip
    python benchmarks/lipschitz_libraries.py [--repeats 5]

Writes lipschitz_libraries.json and .md (benchmarks/out/; benchmarks/results/ under UPDATE_RESULTS=1).
"""
from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict

import torch
import torch.nn as nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from _results import write_results  # noqa: E402

from timm_lipschitz.robustness.lipschitz import jacobian_norm  # noqa: E402


def orthogonium_net() -> nn.Module:
    from timm_lipschitz.models.lipnet import MaxMin, aol_conv, ortho_linear
    return nn.Sequential(
        aol_conv(1, 32), MaxMin(), aol_conv(32, 64, stride=2), MaxMin(), aol_conv(64, 64, stride=2), MaxMin(),
        nn.Flatten(), ortho_linear(64 * 7 * 7, 256), MaxMin(), ortho_linear(256, 10))


def torchlip_net() -> nn.Module:
    from deel.torchlip import FrobeniusLinear, GroupSort2, SpectralConv2d, SpectralLinear
    return nn.Sequential(
        SpectralConv2d(1, 32, 3, padding=1), GroupSort2(),
        SpectralConv2d(32, 64, 3, stride=2, padding=1), GroupSort2(),
        SpectralConv2d(64, 64, 3, stride=2, padding=1), GroupSort2(),
        nn.Flatten(), SpectralLinear(64 * 7 * 7, 256), GroupSort2(), FrobeniusLinear(256, 10))


def plain(net: nn.Module, library: str) -> nn.Module:
    if library == 'deel-torchlip':
        from deel.torchlip import vanilla_model
        return vanilla_model(net, in_place=False)
    from timm_lipschitz.models.lipnet import to_plain
    return to_plain(net)


def timed(fn: Callable[[], None]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--repeats', type=int, default=5)
    p.add_argument('--steps', type=int, default=5, help='training steps per timing')
    args = p.parse_args()
    torch.manual_seed(0)
    x, y = torch.rand(128, 1, 28, 28), torch.randint(0, 10, (128,))
    nets = {'orthogonium': orthogonium_net(), 'deel-torchlip': torchlip_net()}
    opts = {k: torch.optim.SGD(n.parameters(), lr=0.01) for k, n in nets.items()}

    def train(k: str) -> None:
        nets[k].train()
        for _ in range(args.steps):
            opts[k].zero_grad()
            nn.functional.cross_entropy(nets[k](x), y).backward()
            opts[k].step()

    def forward(m: nn.Module) -> None:
        with torch.no_grad():
            m(x)

    times: Dict[str, Dict[str, list]] = {k: {'train': [], 'eval': [], 'plain': []} for k in nets}
    for k in nets:  # warm-up (and the power iterations of deel-torchlip's spectral norm settle)
        train(k)
    exports = {k: plain(nets[k].eval(), k) for k in nets}
    for _ in range(args.repeats):
        for k, net in nets.items():
            times[k]['train'].append(timed(lambda: train(k)) / args.steps)
            net.eval()
            times[k]['eval'].append(timed(lambda: forward(net)))
            times[k]['plain'].append(timed(lambda: forward(exports[k])))
    rows = {}
    for k, net in nets.items():
        net.eval()
        exports[k] = plain(net, k)  # of the final weights (the timed training steps moved them)
        xs = torch.rand(16, 1, 28, 28)
        norms = jacobian_norm(net, xs, iters=50)
        with torch.no_grad():
            gap = (net(xs) - exports[k](xs)).abs().max().item()
        rows[k] = {'train_step_ms': 1e3 * statistics.median(times[k]['train']),
                   'eval_forward_ms': 1e3 * statistics.median(times[k]['eval']),
                   'plain_forward_ms': 1e3 * statistics.median(times[k]['plain']),
                   'max_jacobian_norm': float(norms.max()), 'export_max_abs_diff': gap,
                   'parameters': sum(p.numel() for p in net.parameters())}
    head = (f'Machine: {platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} thread(s); '
            f'batch 128 of 1x28x28; medians of {args.repeats} paired repeats.')
    md = [head, '', '| library | parameters | train step ms | eval forward ms | exported plain forward ms | '
          'max Jacobian norm (16 random images) | export max abs diff |', '|---|---|---|---|---|---|---|']
    for k, r in rows.items():
        md.append(f"| {k} | {r['parameters']:,} | {r['train_step_ms']:.1f} | {r['eval_forward_ms']:.1f} | "
                  f"{r['plain_forward_ms']:.1f} | {r['max_jacobian_norm']:.4f} | {r['export_max_abs_diff']:.1e} |")
    text = '\n'.join(md) + '\n'
    print(text)
    write_results('lipschitz_libraries', {'header': head, 'rows': rows}, text)


if __name__ == '__main__':
    main()

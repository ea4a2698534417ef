"""The paper's CIFAR-10 schedule on one GPU: training speed of each precision / compile configuration, the 300-epoch
time it projects to, and a hand-written PyTorch loop given the same tricks; then bf16-vs-fp32 accuracy parity on
real data (Fashion-MNIST, the Table 3 recipes).

    python benchmarks/gpu_schedule.py schedule [--device cuda] [--images 50000] [--epochs 2] [--configs ...]
    python benchmarks/gpu_schedule.py parity [--seeds 0 1] [--jobs 4]

``schedule`` trains ``recipes/paper/cifar10_resnet20_lipschitz.yaml`` (σ 0.5, β 1, L_n 0.01) and its cross-entropy
twin on synthetic data shaped like CIFAR-10 (``--images`` 3x32x32 images, 10 classes; training only, no evaluation,
no state saves) for ``--epochs`` epochs per configuration, and reports images/s (each with its noisy twin for the
hinge) and the projected 300-epoch time. Writes benchmarks/results/gpu_schedule.{json,md}. ``parity`` trains the
Fashion-MNIST ResNet-20 standard and hinge σ 0.5 recipes in fp32 and in the fastest bf16 configuration, ``--seeds``
each, and writes benchmarks/results/gpu_parity.{json,md}. Targets (one H100 or H200): the 300-epoch Lipschitz schedule
in <= 10 minutes; the trainer >= 0.95x the hand-written loop with the same tricks; a Lipschitz step <= 1.1x a CE step
on the same 2 x 128 images. On a CPU, ``--images 512 --epochs 1 --device cpu`` tries everything at a tiny size (the
CUDA-graph configurations are skipped there).
"""
from __future__ import annotations

import argparse
import json
import re
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from _results import write_results  # noqa: E402  (benchmarks/_results.py, beside this script)
LIPSCHITZ = ROOT / 'recipes' / 'paper' / 'cifar10_resnet20_lipschitz.yaml'
STANDARD = ROOT / 'recipes' / 'paper' / 'cifar10_resnet20_standard.yaml'

# name -> recipe overrides; 'fastest' takes every trick (CUDA graphs through compile mode reduce-overhead)
CONFIGS: Dict[str, Dict[str, Any]] = {
    'fp32': {'precision': 'no'},
    'bf16': {'precision': 'bf16'},
    'fp16': {'precision': 'fp16'},
    'bf16 + channels_last': {'precision': 'bf16', 'channels_last': True},
    'bf16 + compile (model)': {'precision': 'bf16', 'compile': 'model'},
    'bf16 + compile (step)': {'precision': 'bf16', 'compile': 'step'},
    'bf16 + compile (step) + fused SGD': {'precision': 'bf16', 'compile': 'step', 'optimizer.fused': True},
    'fastest: bf16 + channels_last + compile (step, CUDA graphs) + fused SGD': {
        'precision': 'bf16', 'channels_last': True, 'compile': 'step', 'compile_mode': 'reduce-overhead',
        'optimizer.fused': True},
}
GPU_ONLY = ('fp16', 'fastest: bf16 + channels_last + compile (step, CUDA graphs) + fused SGD')


def _device_name(device: str) -> str:
    import torch
    if device.startswith('cuda') and torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f'CPU ({platform.processor() or platform.machine()})'


def _failure(r: subprocess.CompletedProcess) -> str:
    """The line that names why a run failed: the CLI's ``error:`` line or the exception's, not torch's trailing
    hints (``Set TORCHDYNAMO_VERBOSE=1 ...``)."""
    lines = (r.stderr or r.stdout or '').strip().splitlines()
    named = [line for line in lines if re.match(r'(error:|[A-Za-z_.]*(Error|Exception)\b)', line)]
    return (named or lines or [f'exit code {r.returncode}'])[-1]


def _train_speed(recipe: Path, overrides: Dict[str, Any], images: int, epochs: int, out: Path) -> Dict[str, Any]:
    """One training run in a subprocess (a fresh process: no compile cache or CUDA state carried over)."""
    sets = {'data.name': 'synthetic', 'data.input_size': [3, 32, 32],
            'data.kwargs': {'num_samples': images, 'num_classes': 10, 'image_size': [3, 32, 32]},
            'epochs': epochs, 'eval.at_end': False, 'eval.every_epochs': 0, 'checkpoint.every_epochs': 0,
            'schedule.milestones': [], 'log_with': [], 'log_every_steps': max(1, images // 128 // 20),
            'output_dir': str(out), **overrides}
    cmd = [sys.executable, '-m', 'timm_lipschitz.cli', 'train', '--recipe', str(recipe), '--no-progress']
    for k, v in sets.items():
        cmd += ['--set', f'{k}={json.dumps(v)}']
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode:
        return {'error': _failure(r)}
    final = json.loads((out / 'final.json').read_text())
    windows = [row['train/images_per_s'] for row in map(json.loads, (out / 'metrics.jsonl').read_text().splitlines())
               if 'train/images_per_s' in row]
    steady = sorted(windows[2:])[len(windows[2:]) // 2] if len(windows) > 2 else final['images_per_s']
    # steady: the median log window after compilation and warm-up; the run's average includes both
    return {'images_per_s': round(steady, 1), 'run_images_per_s': final['images_per_s'],
            'train_time_s': final['train_time_s'], 'steps': final['steps']}


def plain_loop(device: str, images: int, epochs: int, lipschitz: bool = True) -> Dict[str, Any]:
    """A hand-written PyTorch loop with the trainer's tricks (device-resident data, bf16 autocast, channels_last,
    torch.compile of the whole step with CUDA graphs on a GPU, fused SGD, noise drawn eagerly), the same model,
    objective arithmetic, batch and schedule shape (SGD 0.1, momentum 0.9, wd 1e-4)."""
    import timm
    import torch
    import torch.nn.functional as F

    import timm_lipschitz  # noqa: F401
    torch.manual_seed(0)
    dev = torch.device(device)
    cuda = dev.type == 'cuda'
    model = timm.create_model('cifar_resnet20').to(dev).to(memory_format=torch.channels_last).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4, fused=True)
    data = torch.randint(0, 256, (images, 3, 32, 32), dtype=torch.uint8, device=dev)
    labels = torch.randint(0, 10, (images,), device=dev)
    mean = torch.tensor((0.4914, 0.4822, 0.4465), device=dev).view(1, 3, 1, 1)
    std = torch.tensor((0.2470, 0.2435, 0.2616), device=dev).view(1, 3, 1, 1)
    gen = torch.Generator(device=dev).manual_seed(0)

    def step(x, y, noise):
        with torch.autocast(dev.type, dtype=torch.bfloat16):
            if lipschitz:
                both = model((torch.cat([x, x + noise]) - mean) / std)
                clean, noisy = both[:128].float(), both[128:].float()
                k = (noisy - clean).flatten(1).norm(dim=1) / noise.flatten(1).norm(dim=1)
                loss = F.cross_entropy(clean, y) + F.relu(k - 0.01).mean()
            else:
                loss = F.cross_entropy(model((x - mean) / std).float(), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()
    compiled = torch.compile(step, mode='reduce-overhead' if cuda else 'default')
    steps = images // 128
    for warm in range(3):  # compile and capture outside the timing
        x = data[:128].float().div_(255)
        compiled(x, labels[:128], 0.5 * torch.randn(x.shape, generator=gen, device=dev))
    if cuda:
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(epochs):
        order = torch.randperm(images, device=dev)
        for i in range(steps):
            idx = order[i * 128:(i + 1) * 128]
            x = data[idx].float().div_(255).contiguous(memory_format=torch.channels_last)
            compiled(x, labels[idx], 0.5 * torch.randn(x.shape, generator=gen, device=dev))
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t
    return {'images_per_s': round(epochs * steps * 128 / seconds, 1), 'train_time_s': round(seconds, 2)}


def schedule(args: argparse.Namespace) -> None:
    rows: List[Dict[str, Any]] = []
    on_gpu = args.device.startswith('cuda')
    configs = args.configs or list(CONFIGS)
    with tempfile.TemporaryDirectory() as tmp:
        for objective, recipe in (('lipschitz_hinge', LIPSCHITZ), ('cross_entropy', STANDARD)):
            for name in configs:
                if name in GPU_ONLY and not on_gpu:
                    continue
                if objective == 'cross_entropy' and name not in ('fp32', configs[-1]):
                    continue
                res = _train_speed(recipe, CONFIGS[name], args.images, args.epochs, Path(tmp) / f'{objective}{len(rows)}')
                rows.append({'objective': objective, 'config': name, 'precision': CONFIGS[name]['precision'],
                             'runner': 'trainer', **res})
                print(rows[-1], flush=True)
        for objective in ('lipschitz_hinge', 'cross_entropy'):
            res = plain_loop(args.device, args.images, args.epochs, objective == 'lipschitz_hinge')
            rows.append({'objective': objective, 'config': 'hand-written loop, same tricks', 'precision': 'bf16',
                         'runner': 'plain', **res})
            print(rows[-1], flush=True)
    for r in rows:
        if r.get('images_per_s'):
            r['projected_300_epoch_min'] = round(300 * 50_000 / r['images_per_s'] / 60, 2)
    card = _device_name(args.device)
    result = {'command': 'python benchmarks/gpu_schedule.py schedule ' + ' '.join(sys.argv[2:]), 'device': card,
              'date': time.strftime('%Y-%m-%d'), 'images': args.images, 'epochs': args.epochs, 'rows': rows}
    md = [f"GPU schedule: {card}, {args.images} synthetic 3x32x32 images x {args.epochs} epochs per row, batch 128; "
          f"projected to 300 epochs of 50,000 images (training only).", '',
          '| objective | configuration | runner | precision | images/s | projected 300-epoch min |',
          '|---|---|---|---|---|---|']
    md += [f"| {r['objective']} | {r['config']} | {r['runner']} | {r['precision']} | "
           f"{r.get('images_per_s', r.get('error'))} | {r.get('projected_300_epoch_min', '–')} |" for r in rows]
    write_results('gpu_schedule', result, '\n'.join(md) + '\n')
    print('\n'.join(md))


def parity(args: argparse.Namespace) -> None:
    """fp32 vs the fastest bf16 configuration on Fashion-MNIST (Table 3 recipes), several runs side by side."""
    recipes = {'standard': ROOT / 'recipes/paper/fmnist_resnet20_standard.yaml',
               'hinge σ 0.5': ROOT / 'recipes/paper/fmnist_resnet20_lipschitz_s050.yaml'}
    fastest = dict(CONFIGS[list(CONFIGS)[-1]]) if args.device.startswith('cuda') else {'precision': 'bf16'}
    jobs, rows = [], []
    out = Path(args.out)
    for label, recipe in recipes.items():
        for precision, over in (('fp32', {'precision': 'no'}), ('bf16 fastest', fastest)):
            for seed in args.seeds:
                folder = out / f"{label.split()[0]}_{precision.split()[0]}_seed{seed}"
                cmd = [sys.executable, '-m', 'timm_lipschitz.cli', 'train', '--recipe', str(recipe), '--no-progress',
                       '--set', f'seed={seed}', '--set', 'eval.sigmas=[0.0, 0.3, 0.5]', '--output-dir', str(folder)]
                cmd += [a for k, v in over.items() for a in ('--set', f'{k}={json.dumps(v)}')]
                if args.steps:  # a short trial of the command (the full recipes train 8 epochs)
                    cmd += ['--set', f'steps={args.steps}', '--set', 'epochs=null', '--set', 'eval.max_images=500']
                jobs.append((label, precision, seed, folder, cmd))
    running: List[Any] = []
    for job in jobs:
        while len(running) >= args.jobs:
            running = [p for p in running if p.poll() is None]
            time.sleep(1)
        running.append(subprocess.Popen(job[4], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT))
    for p in running:
        p.wait()
    for label, precision, seed, folder, _ in jobs:
        final = json.loads((folder / 'final.json').read_text()) if (folder / 'final.json').is_file() else {}
        rob = final.get('robustness') or {}
        rnd = (lambda v: None if v is None else round(v, 2))  # noqa: E731
        rows.append({'recipe': label, 'precision': precision, 'seed': seed, 'clean': rnd(final.get('clean_accuracy')),
                     'acc@0.3': rnd(rob.get('acc@0.3')), 'acc@0.5': rnd(rob.get('acc@0.5')),
                     'train_time_s': final.get('train_time_s')})
    md = ['| recipe | precision | seed | clean | σ 0.3 | σ 0.5 | train s |', '|---|---|---|---|---|---|---|']
    md += [f"| {r['recipe']} | {r['precision']} | {r['seed']} | {r['clean']} | {r['acc@0.3']} | {r['acc@0.5']} | "
           f"{r['train_time_s']} |" for r in rows]
    result = {'command': 'python benchmarks/gpu_schedule.py parity ' + ' '.join(sys.argv[2:]),
              'device': _device_name(args.device), 'date': time.strftime('%Y-%m-%d'), 'rows': rows}
    write_results('gpu_parity', result, '\n'.join(md) + '\n')
    print('\n'.join(md))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    sub = p.add_subparsers(dest='what', required=True)
    s = sub.add_parser('schedule')
    s.add_argument('--device', default='cuda')
    s.add_argument('--images', type=int, default=50_000)
    s.add_argument('--epochs', type=int, default=2)
    s.add_argument('--configs', nargs='+', choices=list(CONFIGS))
    q = sub.add_parser('parity')
    q.add_argument('--device', default='cuda')
    q.add_argument('--seeds', type=int, nargs='+', default=[0, 1])
    q.add_argument('--jobs', type=int, default=4)
    q.add_argument('--out', default='runs/gpu_parity')
    q.add_argument('--steps', type=int, help='train only this many steps per run (a trial of the command)')
    args = p.parse_args()
    schedule(args) if args.what == 'schedule' else parity(args)


if __name__ == '__main__':
    main()

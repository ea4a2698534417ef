"""Speed ratios, measured in one run on one machine (absolute times only with the hardware named):

1. Lipschitz-hinge training step / cross-entropy step, ResNet-20, batch 128 (target <= 2.0x); also the two-forward
   variant (joint_forward=False) for comparison;
2. the Accelerate trainer's images/s vs a plain hand-written PyTorch loop on the same model and data (>= 0.95x);
3. the fast device-resident data path vs the standard DataLoader path (an epoch of CIFAR-size data, crop + flip);
4. a 51-level noise sweep vs 51 clean evaluations of the same test set (target <= 1.1x);
5. peak memory of a Lipschitz step vs a CE step (CUDA: max allocated; CPU: peak RSS of a fresh process);
6. the adversarial objectives' steps against a CE step;
7. the 1-Lipschitz lip_convnet's training step and cached eval forward against a plain net of the same shape.

Timings are paired: the variants alternate within each repeat and the median over repeats is reported.

    python benchmarks/speed.py [--device cpu|cuda] [--repeats 5] [--quick]

Writes speed_<device>.json and .md (benchmarks/out/; benchmarks/results/ under UPDATE_RESULTS=1) and prints the table.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import timm  # noqa: E402

import timm_lipschitz  # noqa: E402,F401
from timm_lipschitz.data import DeviceLoader, create_dataset, standard_loader, train_transform  # noqa: E402
from timm_lipschitz.losses import create_loss  # noqa: E402
from timm_lipschitz.modes import for_evaluation  # noqa: E402

from _results import OUT, TRACKED  # noqa: E402  (benchmarks/_results.py: out/, or results/ under UPDATE_RESULTS=1)
ITEMS = ('loss_ratio', 'trainer', 'data_paths', 'sweep', 'memory', 'adversarial', 'lipschitz_net')


def _sync(device):
    if device.type == 'cuda':
        torch.cuda.synchronize()


def _step_timer(objective, device, batch=128, size=(3, 32, 32), steps=5, channels_last=False):
    torch.manual_seed(0)
    model = timm.create_model('cifar_resnet20').to(device).train()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.rand(batch, *size, device=device)
    y = torch.randint(0, 10, (batch,), device=device)

    def run(n):
        _sync(device)
        t = time.perf_counter()
        for _ in range(n):
            out = objective(model, x, y)
            opt.zero_grad(set_to_none=True)
            out.loss.backward()
            opt.step()
        _sync(device)
        return (time.perf_counter() - t) / n
    run(2)  # warm-up
    return run, steps


def paired(fns, repeats):
    """Alternate the callables ``repeats`` times; medians per callable."""
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            times[k].append(f())
    return {k: statistics.median(v) for k, v in times.items()}, times


def _scale(device, cpu: int, cuda: int) -> int:
    """A GPU step is ~100x shorter: more work per timing keeps launch jitter out of the medians."""
    return cuda if device.type == 'cuda' else cpu


def bench_loss_ratio(device, repeats, quick):
    steps = 2 if quick else _scale(device, 5, 50)
    objs = {'cross_entropy': create_loss('cross_entropy'),
            'lipschitz_hinge': create_loss('lipschitz_hinge', sigma=0.25, beta=5, lipschitz_target=0.01),
            'lipschitz_hinge (two forwards)': create_loss('lipschitz_hinge', sigma=0.25, beta=5,
                                                          lipschitz_target=0.01, joint_forward=False),
            'gaussian_augmentation': create_loss('gaussian_augmentation', sigma=0.25)}
    runners = {k: _step_timer(o, device, steps=steps) for k, o in objs.items()}
    # channels_last (recipe key channels_last: true) for both, and the compute floor: CE on 2 x 128 images
    runners['cross_entropy channels_last'] = _step_timer(objs['cross_entropy'], device, steps=steps,
                                                         channels_last=True)
    runners['lipschitz_hinge channels_last'] = _step_timer(objs['lipschitz_hinge'], device, steps=steps,
                                                           channels_last=True)
    runners['cross_entropy batch 256 (floor)'] = _step_timer(objs['cross_entropy'], device, batch=256, steps=steps)
    med, raw = paired({k: (lambda r=r: r[0](r[1])) for k, r in runners.items()}, repeats)
    ce, ce_cl = med['cross_entropy'], med['cross_entropy channels_last']
    ratio = {k: v / (ce_cl if 'channels_last' in k else ce) for k, v in med.items()}
    return {'step_seconds': med, 'ratio_to_ce': ratio, 'raw': raw, 'batch': 128, 'model': 'cifar_resnet20',
            'overhead_over_floor': med['lipschitz_hinge'] / med['cross_entropy batch 256 (floor)']}


def bench_adversarial(device, repeats, quick):
    """The worst-direction hinge and the adversarial peers against a CE step, paired in one run (ResNet-20, batch
    128): each search costs ``steps`` forward-backward passes, so a step costs about (steps + 2)x a CE step."""
    steps = 2 if quick else _scale(device, 3, 30)
    objs = {'cross_entropy': create_loss('cross_entropy'),
            'lipschitz_hinge (gaussian)': create_loss('lipschitz_hinge', sigma=0.25, beta=5, lipschitz_target=0.01),
            'lipschitz_hinge (adversarial, 3 steps)': create_loss('lipschitz_hinge', sigma=0.25, beta=5,
                                                                  lipschitz_target=0.01, perturbation='adversarial',
                                                                  radius=0.5, steps=3),
            'pgd_adversarial (l2 0.5, 5 steps)': create_loss('pgd_adversarial', norm='l2', epsilon=0.5, steps=5),
            'trades (l2 0.5, 5 steps)': create_loss('trades', norm='l2', epsilon=0.5, steps=5)}
    med, raw = paired({k: (lambda r=r: r[0](r[1])) for k, r in
                       {k: _step_timer(o, device, steps=steps) for k, o in objs.items()}.items()}, repeats)
    return {'step_seconds': med, 'ratio_to_ce': {k: v / med['cross_entropy'] for k, v in med.items()}, 'raw': raw,
            'batch': 128, 'model': 'cifar_resnet20', 'expected': {'lipschitz_hinge (adversarial, 3 steps)': 5,
                                                                   'pgd_adversarial (l2 0.5, 5 steps)': 7,
                                                                   'trades (l2 0.5, 5 steps)': 7}}


def _plain_twin():
    """A plain net of lip_convnet's shape (ReLU for MaxMin, unconstrained layers): the cost the constraint adds."""
    import torch.nn as nn
    return nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 64, 3, 2, 1), nn.ReLU(),
                         nn.Conv2d(64, 64, 3, 2, 1), nn.ReLU(), nn.Flatten(), nn.Linear(64 * 7 * 7, 256), nn.ReLU(),
                         nn.Linear(256, 10))


def bench_lipschitz_net(device, repeats, quick):
    """The 1-Lipschitz lip_convnet against a plain net of the same shape (1x28x28, batch 128), paired in one run: a
    training step (Lipschitz-margin objective for both) and the eval forward (the 1-Lipschitz net's plain export,
    which the evaluation builds once; the constrained forward at each call too, for comparison)."""
    steps = 2 if quick else _scale(device, 5, 50)
    torch.manual_seed(0)
    nets = {'lip_convnet': timm.create_model('lip_convnet').to(device), 'plain twin': _plain_twin().to(device)}
    nets['plain twin'].pretrained_cfg = dict(nets['lip_convnet'].pretrained_cfg)
    x = torch.rand(128, 1, 28, 28, device=device)
    y = torch.randint(0, 10, (128,), device=device)
    objective = create_loss('lipschitz_margin', epsilon=0.5, temperature=8.0)
    opts = {k: torch.optim.Adam(m.parameters(), lr=1e-3) for k, m in nets.items()}

    def train(k):
        def run():
            nets[k].train()
            _sync(device)
            t = time.perf_counter()
            for _ in range(steps):
                opts[k].zero_grad(set_to_none=True)
                objective(nets[k], x, y).loss.backward()
                opts[k].step()
            _sync(device)
            return (time.perf_counter() - t) / steps
        return run

    def forward(k, exported=True):
        def run():
            m = nets[k].eval()
            if k == 'lip_convnet' and exported:
                m = for_evaluation(m)  # the evaluation's plain export, built once per evaluation; timed is its forward
            _sync(device)
            t = time.perf_counter()
            with torch.no_grad():
                for _ in range(steps):
                    m(x)
            _sync(device)
            return (time.perf_counter() - t) / steps
        return run

    for k in nets:
        train(k)()  # warm-up
    med, raw = paired({'train lip_convnet': train('lip_convnet'), 'train plain twin': train('plain twin'),
                       'eval lip_convnet (exported)': forward('lip_convnet'),
                       'eval lip_convnet (constrained at each call)': forward('lip_convnet', exported=False),
                       'eval plain twin': forward('plain twin')}, repeats)
    return {'step_seconds': med, 'raw': raw, 'batch': 128, 'input': [1, 28, 28], 'profile': _profile_step(
                nets['lip_convnet'], objective, opts['lip_convnet'], x, y),
            'train_ratio': med['train lip_convnet'] / med['train plain twin'],
            'eval_ratio': med['eval lip_convnet (exported)'] / med['eval plain twin'],
            'eval_uncached_ratio': med['eval lip_convnet (constrained at each call)'] / med['eval plain twin']}


def _profile_step(net, objective, opt, x, y, steps: int = 3, top: int = 8):
    """Where a 1-Lipschitz training step spends its time: torch.profiler's operators by self CPU time (%)."""
    from torch.profiler import ProfilerActivity, profile
    net.train()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            objective(net, x, y).loss.backward()
            opt.step()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    return [{'op': e.key, 'self_cpu_percent': 100.0 * e.self_cpu_time_total / total} for e in events[:top]]


def bench_trainer_vs_plain(device, repeats, quick, tmp):
    """The trainer (fast path, CE, no eval) vs a plain loop over the same device tensors, same steps."""
    from timm_lipschitz.train import train
    n_img = 1280 if quick else _scale(device, 2560, 25600)
    steps = n_img // 128
    recipe = {'name': 'speed', 'model': {'name': 'cifar_resnet20'}, 'loss': {'name': 'cross_entropy'},
              'data': {'name': 'synthetic', 'input_size': [3, 32, 32], 'fast_path': True, 'augmentation': 'none',
                       'kwargs': {'num_samples': n_img}},
              'optimizer': {'name': 'sgd', 'lr': 0.05, 'momentum': 0.9, 'weight_decay': 5e-4},
              'schedule': {'name': 'none'}, 'epochs': 1, 'batch_size': 128, 'log_with': [],
              'eval': {'at_end': False, 'every_epochs': 0}, 'output_dir': str(tmp / 'speed_run')}

    saves = []  # seconds of the trainer's one end-of-epoch state save, timed apart (a plain loop saves nothing)

    def trainer():
        s = train(recipe, progress=False)
        saves.append(s['state_save_s'])
        return s['train_time_s'] / steps

    ds, _ = create_dataset('synthetic', 'train', num_samples=n_img)

    def plain():
        torch.manual_seed(0)
        model = timm.create_model('cifar_resnet20').to(device).train()
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
        images = ds.images.to(device)
        labels = ds.labels.to(device)
        mean = torch.tensor(model.pretrained_cfg['mean'], device=device).view(1, 3, 1, 1)
        std = torch.tensor(model.pretrained_cfg['std'], device=device).view(1, 3, 1, 1)
        order = torch.randperm(n_img, device=device)
        _sync(device)
        t = time.perf_counter()
        for i in range(steps):
            idx = order[i * 128:(i + 1) * 128]
            x = (images[idx].float() / 255 - mean) / std
            loss = torch.nn.functional.cross_entropy(model(x), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        _sync(device)
        return (time.perf_counter() - t) / steps
    med, raw = paired({'plain_loop': plain, 'trainer': trainer}, repeats)
    raw['trainer_loop'] = [t - s / steps for t, s in zip(raw['trainer'], saves)]
    med['trainer_loop'] = statistics.median(raw['trainer_loop'])
    return {'step_seconds': med, 'images_per_s': {k: 128 / v for k, v in med.items()},
            'trainer_over_plain_images_per_s': med['plain_loop'] / med['trainer'],
            'trainer_loop_over_plain_images_per_s': med['plain_loop'] / med['trainer_loop'],
            'state_save_s': statistics.median(saves), 'raw': raw, 'steps': steps}


def bench_data_paths(device, repeats, quick):
    n = 5000 if quick else 20000
    ds, _ = create_dataset('synthetic', 'train', num_samples=n)

    def fast():
        loader = DeviceLoader(ds, 128, shuffle=True, seed=0, augmentation='cifar', device=device)
        _sync(device)
        t = time.perf_counter()
        for x, y in loader:
            pass
        _sync(device)
        return n / (time.perf_counter() - t)

    def standard():
        ds.transform = train_transform('cifar', (3, 32, 32))
        loader = standard_loader(ds, 128, shuffle=True, seed=0, drop_last=True, num_workers=0)
        t = time.perf_counter()
        for x, y in loader:
            x = x.to(device, non_blocking=True)
        _sync(device)
        ds.transform = None
        return n / (time.perf_counter() - t)
    times = {'fast_path': [], 'standard_dataloader': []}
    for _ in range(repeats):
        times['fast_path'].append(fast())
        times['standard_dataloader'].append(standard())
    med = {k: statistics.median(v) for k, v in times.items()}
    return {'images_per_s': med, 'speedup': med['fast_path'] / med['standard_dataloader'], 'raw': times,
            'num_images': n, 'augmentation': 'cifar (crop 4 + flip)'}


def bench_sweep(device, repeats, quick):
    from timm_lipschitz.normalization import Normalizer
    from timm_lipschitz.robustness import PAPER_SIGMAS, noise_sweep
    n = 256 if quick else _scale(device, 1000, 10000)
    ds, _ = create_dataset('synthetic', 'test', num_samples=n)
    model = timm.create_model('cifar_resnet20').to(device).eval()
    norm = Normalizer()

    @torch.no_grad()
    def clean_evals():
        t = time.perf_counter()
        for _ in PAPER_SIGMAS:  # 51 separate evaluations, each reading the data
            for x, y in torch.utils.data.DataLoader(ds, batch_size=256):
                model(norm(model, x.to(device))).argmax(1)
        _sync(device)
        return time.perf_counter() - t

    def sweep():
        t = time.perf_counter()
        noise_sweep(model, ds, PAPER_SIGMAS, batch_size=256)
        _sync(device)
        return time.perf_counter() - t
    med, raw = paired({'51_clean_evaluations': clean_evals, 'noise_sweep_51_levels': sweep}, repeats)
    return {'seconds': med, 'ratio': med['noise_sweep_51_levels'] / med['51_clean_evaluations'], 'raw': raw,
            'num_images': n}


_MEM_CHILD = r'''
import os, sys, torch, timm, timm_lipschitz
from timm_lipschitz.losses import create_loss
def rss():  # resident set size now, in KiB
    return int(open('/proc/self/statm').read().split()[1]) * os.sysconf('SC_PAGE_SIZE') // 1024
name = sys.argv[1]
torch.manual_seed(0)
model = timm.create_model('cifar_resnet20').train()
opt = torch.optim.SGD(model.parameters(), lr=0.01)
x, y = torch.rand(128, 3, 32, 32), torch.randint(0, 10, (128,))
obj = create_loss(name) if name == 'cross_entropy' else create_loss(name, sigma=0.25, beta=5, lipschitz_target=0.01)
base, peak = rss(), 0
for _ in range(3):
    out = obj(model, x, y)
    peak = max(peak, rss())  # after the forward: every activation of the graph is alive
    opt.zero_grad(); out.loss.backward(); opt.step()
    peak = max(peak, rss())
print(peak - base)
'''


def bench_memory(device):
    if device.type == 'cuda':
        res = {}
        for name in ('cross_entropy', 'lipschitz_hinge'):
            run, _ = _step_timer(create_loss(name) if name == 'cross_entropy' else
                                 create_loss(name, sigma=0.25, beta=5, lipschitz_target=0.01), device, steps=1)
            torch.cuda.reset_peak_memory_stats()
            run(2)
            res[name] = torch.cuda.max_memory_allocated() / 2 ** 20
        return {'peak_mib': res, 'ratio': res['lipschitz_hinge'] / res['cross_entropy'], 'method': 'cuda max allocated'}
    res = {}
    for name in ('cross_entropy', 'lipschitz_hinge'):
        out = subprocess.run([sys.executable, '-c', _MEM_CHILD, name], capture_output=True, text=True, check=True,
                             cwd=ROOT)
        res[name] = int(out.stdout.strip().splitlines()[-1]) / 1024
    return {'peak_rss_growth_mib': res, 'ratio': res['lipschitz_hinge'] / res['cross_entropy'],
            'method': 'RSS growth at the end of forward / step, 3 steps in a fresh process'}


def hardware(device) -> str:
    if device.type == 'cuda':
        return torch.cuda.get_device_name(0)
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path('/proc/cpuinfo').read_text().splitlines():
            if line.startswith('model name'):
                cpu = line.split(':', 1)[1].strip()
                break
    except OSError:
        pass
    return f'{cpu}, {torch.get_num_threads()} threads'


def markdown(r) -> str:
    lr, tr, dp, sw, mem = r['loss_ratio'], r['trainer'], r['data_paths'], r['sweep'], r['memory']
    mem_key = 'peak_mib' if 'peak_mib' in mem else 'peak_rss_growth_mib'
    lines = [f"Hardware: {r['hardware']}; torch {r['torch']}; {r['date']}; command: `{r['command']}`", '',
             '| measurement | value | target |', '|---|---|---|',
             f"| Lipschitz step / CE step (ResNet-20, batch 128, joint forward) | "
             f"{lr['ratio_to_ce']['lipschitz_hinge']:.2f}x ({lr['step_seconds']['lipschitz_hinge'] * 1e3:.0f} ms vs "
             f"{lr['step_seconds']['cross_entropy'] * 1e3:.0f} ms) | <= 2.0x |",
             f"| same, channels_last (model and inputs NHWC; each ratio to CE in the same layout) | "
             f"{lr['ratio_to_ce']['lipschitz_hinge channels_last']:.2f}x "
             f"({lr['step_seconds']['lipschitz_hinge channels_last'] * 1e3:.0f} ms vs "
             f"{lr['step_seconds']['cross_entropy channels_last'] * 1e3:.0f} ms) | <= 2.0x |",
             f"| CE step on 2 x 128 images / CE step (the compute floor of any clean+noisy method) | "
             f"{lr['ratio_to_ce']['cross_entropy batch 256 (floor)']:.2f}x; Lipschitz step / floor "
             f"{lr['overhead_over_floor']:.3f} | - |",
             f"| same, two separate forwards | {lr['ratio_to_ce']['lipschitz_hinge (two forwards)']:.2f}x | - |",
             f"| Gaussian augmentation step / CE step | {lr['ratio_to_ce']['gaussian_augmentation']:.2f}x | - |",
             f"| trainer images/s / plain PyTorch loop images/s | {tr['trainer_over_plain_images_per_s']:.3f} "
             f"({tr['images_per_s']['trainer']:.0f} vs {tr['images_per_s']['plain_loop']:.0f} img/s) | >= 0.95 |",
             *([f"| same, the training loop alone (without the trainer's one end-of-epoch state save, "
                f"{tr['state_save_s'] * 1e3:.0f} ms per {tr['steps']} steps) | "
                f"{tr['trainer_loop_over_plain_images_per_s']:.3f} | >= 0.95 |"] if 'state_save_s' in tr else []),
             f"| fast device path / standard DataLoader (crop+flip, loading only) | {dp['speedup']:.1f}x "
             f"({dp['images_per_s']['fast_path']:.0f} vs {dp['images_per_s']['standard_dataloader']:.0f} img/s) | "
             f"> 1 |",
             f"| 51-level noise sweep / 51 clean evaluations | {sw['ratio']:.2f} "
             f"({sw['seconds']['noise_sweep_51_levels']:.1f} s vs {sw['seconds']['51_clean_evaluations']:.1f} s) | "
             f"<= 1.1 |",
             f"| peak memory Lipschitz / CE step ({mem['method']}) | {mem['ratio']:.2f}x "
             f"({mem[mem_key]['lipschitz_hinge']:.0f} vs {mem[mem_key]['cross_entropy']:.0f} MiB) | - |"]
    adv = r.get('adversarial', {})
    for name, expected in adv.get('expected', {}).items():
        lines.append(f"| {name} step / CE step (paired in one run) | {adv['ratio_to_ce'][name]:.2f}x "
                     f"({adv['step_seconds'][name] * 1e3:.0f} vs {adv['step_seconds']['cross_entropy'] * 1e3:.0f} ms) "
                     f"| about {expected}x (steps + 2) |")
    lip = r.get('lipschitz_net')
    if lip:
        ms = {k: v * 1e3 for k, v in lip['step_seconds'].items()}
        lines += [f"| lip_convnet training step / plain twin's (batch 128, 1x28x28, Lipschitz margin) | "
                  f"{lip['train_ratio']:.2f}x ({ms['train lip_convnet']:.0f} vs {ms['train plain twin']:.0f} ms) | - |",
                  f"| lip_convnet eval forward (plain export) / plain twin's | {lip['eval_ratio']:.2f}x "
                  f"({ms['eval lip_convnet (exported)']:.1f} vs {ms['eval plain twin']:.1f} ms; constrained at "
                  f"each call {lip['eval_uncached_ratio']:.2f}x) | <= 1.2x |"]
    for name in ITEMS:
        run = (r.get(name) or {}).get('run')
        if run and run['command'] != r['command']:
            lines.append(f"\n`{name}` re-measured later: {run['hardware']}; torch {run['torch']}; {run['date']}; "
                         f"command: `{run['command']}`")
    return '\n'.join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    p.add_argument('--repeats', type=int, default=5)
    p.add_argument('--quick', action='store_true', help='smaller sizes (a smoke run)')
    p.add_argument('--only', nargs='+', choices=ITEMS)
    args = p.parse_args()
    device = torch.device(args.device)
    import tempfile
    tmp = Path(tempfile.mkdtemp())
    r = {'hardware': hardware(device), 'torch': torch.__version__, 'date': time.strftime('%Y-%m-%d'),
         'command': 'python ' + ' '.join(['benchmarks/speed.py'] + sys.argv[1:])}
    todo = args.only or list(ITEMS)
    speed_file = f'speed_{device.type}.json'
    prev = next((d / speed_file for d in (OUT, TRACKED) if (d / speed_file).is_file()), OUT / speed_file)
    run = {k: r[k] for k in ('hardware', 'torch', 'date', 'command')}
    if args.only and prev.is_file():  # re-measure some items, keep the others (and say which run measured what)
        r = json.loads(prev.read_text())
    for name in todo:
        t = time.time()
        if name == 'loss_ratio':
            r[name] = bench_loss_ratio(device, args.repeats, args.quick)
        elif name == 'trainer':
            r[name] = bench_trainer_vs_plain(device, args.repeats, args.quick, tmp)
        elif name == 'data_paths':
            r[name] = bench_data_paths(device, args.repeats, args.quick)
        elif name == 'sweep':
            r[name] = bench_sweep(device, max(1, args.repeats // 2), args.quick)
        elif name == 'adversarial':
            r[name] = bench_adversarial(device, args.repeats, args.quick)
        elif name == 'lipschitz_net':
            r[name] = bench_lipschitz_net(device, args.repeats, args.quick)
        else:
            r[name] = bench_memory(device)
        r[name]['run'] = run
        print(f'{name}: done in {time.time() - t:.0f}s', flush=True)
        OUT.mkdir(parents=True, exist_ok=True)
        (OUT / speed_file).write_text(json.dumps(r, indent=1))  # saved after every item
    if set(ITEMS) <= set(r):
        md = markdown(r)
        (OUT / f'speed_{device.type}.md').write_text(md + '\n')
        print(md)
    else:
        print(json.dumps({k: v for k, v in r.items() if k not in ('raw',)}, indent=1, default=str)[:3000])


if __name__ == '__main__':
    main()

"""Trainer: in-process runs on tiny recipes, plus the few subprocess tests of launching, killing and resuming."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from helpers import max_weight_diff, tiny_recipe
from safetensors.torch import load_file
from timm_lipschitz.recipes import RecipeError, resolve_recipe
from timm_lipschitz.train import (DivergenceGuard, TrainState, TrainingDiverged, _window_add, _window_means,
                                  latest_state, optimizer_stepper, step_target, train)

import timm_lipschitz  # noqa: F401

ROOT = Path(__file__).resolve().parent.parent


def tiny(tmp_path, name='tiny', **over):
    """A recipe that trains the paper's MNIST net on 8x8 digits in seconds."""
    recipe = {
        'name': name,
        'model': {'name': 'mnist_convnet'},
        'data': {'name': 'digits', 'input_size': [1, 8, 8], 'fast_path': True},
        'loss': {'name': 'lipschitz_hinge', 'sigma': 0.3, 'beta': 1.0, 'lipschitz_target': 0.1},
        'optimizer': {'name': 'sgd', 'lr': 0.05, 'momentum': 0.9, 'weight_decay': 0.0},
        'schedule': {'name': 'none'},
        'epochs': 1,
        'batch_size': 64,
        'eval': {'sigmas': '0:0.5:0.25', 'every_epochs': 1},
        'log_with': [],
        'log_every_steps': 5,
        'output_dir': str(tmp_path / name),
    }
    for key, value in over.items():
        section, _, sub = key.partition('__')
        if sub:
            recipe.setdefault(section, {})[sub] = value
        else:
            recipe[key] = value
    return recipe


def _write(tmp_path, recipe, name='r.yaml'):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(recipe))
    return path


def _env():
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=str(ROOT), HF_HUB_OFFLINE='1')
    return env


def test_train_writes_the_run_folder(tmp_path):
    summary = train(tiny(tmp_path), progress=False)
    out = Path(summary['output_dir'])
    for f in ('recipe.yaml', 'metrics.jsonl', 'model.safetensors', 'config.json', 'README.md', 'robustness.json',
              'robustness.md', 'robustness.png', 'final.json'):
        assert (out / f).is_file(), f
    assert summary['steps'] == 1437 // 64 and summary['epochs'] == 1
    assert summary['clean_accuracy'] > 30  # one epoch on 8x8 digits learns something
    assert set(summary['robustness']) == {'acc@0', 'acc@0.3', 'acc@0.5', 'grid_mean'}
    rows = [json.loads(line) for line in (out / 'metrics.jsonl').read_text().splitlines()]
    train_rows = [r for r in rows if 'train/loss' in r]
    assert train_rows and {'train/k_mean', 'train/hinge_active_fraction', 'train/images_per_s'} <= set(train_rows[0])
    assert latest_state(out) is not None
    final = json.loads((out / 'final.json').read_text())
    assert final['objective'] == 'lipschitz_hinge' and final['hparams']['sigma'] == 0.3


def test_standard_and_fast_paths_train_identically_without_augmentation(tmp_path):
    a = train(tiny(tmp_path, 'fast', loss={'name': 'cross_entropy'}, eval__at_end=False), progress=False)
    b = train(tiny(tmp_path, 'std', loss={'name': 'cross_entropy'}, data__fast_path=False, eval__at_end=False),
              progress=False)
    wa = load_file(str(Path(a['output_dir']) / 'model.safetensors'))
    wb = load_file(str(Path(b['output_dir']) / 'model.safetensors'))
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=1e-6)


def test_steps_limit_gradient_accumulation_and_multistep_schedule(tmp_path):
    s = train(tiny(tmp_path, steps=7, epochs=None, gradient_accumulation_steps=2,
                   schedule={'name': 'multistep', 'milestones': [0], 'decay_rate': 0.1},
                   eval__at_end=False), progress=False)
    assert s['steps'] == 7
    rows = [json.loads(x) for x in (Path(s['output_dir']) / 'metrics.jsonl').read_text().splitlines()]
    lrs = [r['train/lr'] for r in rows if 'train/lr' in r]
    assert lrs and all(abs(lr - 0.005) < 1e-9 for lr in lrs)  # decayed at epoch 0 by 0.1


def test_gradient_accumulation_matches_the_full_batch(tmp_path):
    """Two micro-batches of 16 with accumulation take the same optimizer steps as batches of 32 (the MNIST net has
    no BatchNorm, and CE is a mean): the optimizer must step once per two micro-batches, on the averaged gradient."""
    weights = {}
    for accum in (1, 2):
        s = train(tiny(tmp_path, name=f'acc{accum}', loss={'name': 'cross_entropy'}, batch_size=32, steps=4,
                       epochs=None, gradient_accumulation_steps=accum, data__augmentation='none',
                       eval__at_end=False), progress=False)
        assert s['steps'] == 4
        weights[accum] = load_file(str(Path(s['output_dir']) / 'model.safetensors'))
    for k, v in weights[1].items():
        torch.testing.assert_close(weights[2][k], v, rtol=1e-4, atol=1e-5)


def test_bf16_autocast_on_cpu_trains(tmp_path):
    s = train(tiny(tmp_path, precision='bf16', eval__at_end=False), progress=False)
    assert s['clean_accuracy'] > 20
    w = load_file(str(Path(s['output_dir']) / 'model.safetensors'))
    assert all(torch.isfinite(v).all() for v in w.values())


def test_ema_and_channels_last(tmp_path):
    """EMA weights are what is saved and scored (clean accuracy and the sweep come from the saved weights), and
    channels_last changes only the memory layout: one step gives the same weights up to float rounding (BatchNorm
    on 8x8 images makes later steps chaotic, so only one is compared)."""
    from timm_lipschitz.data import create_dataset
    from timm_lipschitz.evaluate import load_model
    from timm_lipschitz.robustness import noise_sweep
    common = dict(eval={'sigmas': [0.0, 0.3], 'every_epochs': 1}, model={'name': 'cifar_resnet20'},
                  data__input_size=[1, 8, 8], batch_size=128)
    ema = train(tiny(tmp_path, 'ema', ema={'enabled': True, 'decay': 0.9}, **common), progress=False)
    raw = train(tiny(tmp_path, 'raw', **common), progress=False)
    w_ema, w_raw = (load_file(str(Path(s['output_dir']) / 'model.safetensors')) for s in (ema, raw))
    assert any(not torch.allclose(w_ema[k].float(), w_raw[k].float()) for k in w_ema if 'weight' in k)
    assert ema['weights'] == 'EMA' and ema['history'][-1]['weights'] == 'trained (not EMA)'
    model, _ = load_model(ema['output_dir'])
    ds, _ = create_dataset('digits', 'test', input_size=(1, 8, 8))
    saved_acc = noise_sweep(model, ds, [0.0]).at(0.0)
    assert ema['clean_accuracy'] == pytest.approx(saved_acc, abs=1e-9) == pytest.approx(ema['robustness']['acc@0'])
    one = dict(common, steps=1, epochs=None, eval={'at_end': False, 'every_epochs': 0})
    cl, cf = (train(tiny(tmp_path, n, channels_last=c, **one), progress=False) for n, c in (('cl', True),
                                                                                           ('cf', False)))
    w_cl, w_cf = (load_file(str(Path(s['output_dir']) / 'model.safetensors')) for s in (cl, cf))
    for k in w_cl:
        torch.testing.assert_close(w_cl[k], w_cf[k], rtol=1e-3, atol=1e-3)


def test_training_steps_do_not_sync_the_host_every_step(tmp_path, monkeypatch):
    """Reading a device tensor on the host (item/float/bool) waits for the GPU: the trainer may do it at log lines,
    state saves and epoch ends, never once per step, or small models run slower on a GPU than a plain loop.
    Counted: such reads made by the trainer's own code; the count must not grow with the number of steps."""
    import traceback
    reads = {'n': 0}
    for name in ('item', '__float__', '__bool__', '__int__'):
        original = getattr(torch.Tensor, name)

        def counted(self, *a, _original=original, **k):
            caller = traceback.extract_stack(limit=2)[0]
            reads['n'] += caller.filename.endswith(os.path.join('timm_lipschitz', 'train.py'))
            return _original(self, *a, **k)
        monkeypatch.setattr(torch.Tensor, name, counted)
    counts = {}
    for steps in (8, 32):
        reads['n'] = 0
        recipe = tiny(tmp_path, name=f's{steps}', epochs=None, steps=steps, log_every_steps=1000,
                      eval__every_epochs=0, eval__at_end=False, checkpoint={'every_steps': 0})
        assert train(recipe, progress=False)['steps'] == steps
        counts[steps] = reads['n']
    assert counts[32] - counts[8] < 6, f'host reads of device tensors by the trainer: {counts} (steps: reads)'


def test_nan_loss_stops_with_step_and_keeps_last_good_state(tmp_path):
    recipe = tiny(tmp_path, optimizer={'name': 'sgd', 'lr': 1e12, 'momentum': 0.0}, checkpoint={'every_steps': 1},
                  loss={'name': 'cross_entropy'})
    with pytest.raises(TrainingDiverged, match=r'loss is (nan|inf) at step \d+ .*last good state is .*step_'):
        train(recipe, progress=False)
    out = Path(recipe['output_dir'])
    diverged = json.loads((out / 'diverged.json').read_text())
    good = latest_state(out)
    assert good is not None and int(good.name.split('_')[1]) == diverged['step'] - 1
    weights = load_file(str(good / 'model.safetensors'))
    assert all(torch.isfinite(v).all() for v in weights.values())
    assert not (out / 'final.json').exists()
    assert not list((out / 'state').glob('.tmp*'))


@pytest.mark.parametrize('fold_every', [2, 3, 1024])
def test_divergence_guard_names_the_first_bad_step_across_folds(tmp_path, monkeypatch, fold_every):
    """Losses are folded in chunks; the first non-finite one wins, whichever chunk it lands in, and a later
    bad chunk does not overwrite it. Repeated step numbers are gradient-accumulation micro-batches."""
    from types import SimpleNamespace
    monkeypatch.setattr(DivergenceGuard, 'FOLD_EVERY', fold_every)
    guard, state = DivergenceGuard(torch.device('cpu')), TrainState()
    acc = SimpleNamespace(num_processes=1, is_main_process=True)
    for step, loss in [(1, 2.3), (1, 2.1), (2, 1.9)]:
        guard.observe(torch.tensor(loss), step)
    guard.check(acc, state, tmp_path)  # all finite: no error
    for step, loss in [(3, 1.5), (3, 1.4), (4, 1.2), (4, float('inf')), (5, float('nan')), (6, 1.0)]:
        guard.observe(torch.tensor(loss), step)
    with pytest.raises(TrainingDiverged, match=r'loss is inf at step 4 '):
        guard.check(acc, state, tmp_path)
    assert json.loads((tmp_path / 'diverged.json').read_text())['step'] == 4


def test_log_window_means_survive_folding():
    """Per-step metrics are kept as device tensors and folded into sums every few steps; the logged mean must be
    the plain mean of every step, folded or not, for tensor and Python-number metrics alike."""
    window, losses = {}, [0.5 * i for i in range(11)]
    for i, v in enumerate(losses):
        _window_add(window, 'loss', torch.tensor(v), fold_every=4)
        _window_add(window, 'count', i)
    assert len(window['loss']) < len(losses)
    means = _window_means(window, len(losses))
    assert means['loss'] == pytest.approx(sum(losses) / len(losses))
    assert means['count'] == pytest.approx(5.0)


def test_optimizer_stepper_matches_the_wrapped_step_and_keeps_the_wrapper_where_needed():
    """The stepper skips Accelerate's optimizer wrapper only where the wrapper would do nothing: the update must
    equal a plain SGD step, gradients must be cleared, and a GradScaler keeps the wrapper in charge."""
    from accelerate import Accelerator
    torch.manual_seed(0)
    model, reference = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    reference.load_state_dict(model.state_dict())
    accelerator = Accelerator(cpu=True)
    model, optimizer = accelerator.prepare(model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9))
    ref_opt = torch.optim.SGD(reference.parameters(), lr=0.1, momentum=0.9)
    assert step_target(accelerator, optimizer) is optimizer.optimizer
    step = optimizer_stepper(accelerator, optimizer)
    x = torch.randn(4, 3)
    for _ in range(3):
        accelerator.backward(model(x).square().sum())
        step()
        reference(x).square().sum().backward()
        ref_opt.step()
        ref_opt.zero_grad()
        assert all(p.grad is None for p in model.parameters())
    for p, q in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(p, q)
    optimizer.scaler = torch.amp.GradScaler('cpu')  # fp16 training: the wrapper's unscale/skip logic is needed
    assert step_target(accelerator, optimizer) is optimizer


def test_label_out_of_range_is_rejected_before_training(tmp_path):
    with pytest.raises(ValueError, match='num_classes=5'):
        train(tiny(tmp_path, model={'name': 'mnist_convnet', 'kwargs': {'num_classes': 5}}), progress=False)


# ---- subprocess tests: launching, killing, resuming, two processes --------------------------------------------------
def _run(args, **kw):
    return subprocess.run(args, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600, **kw)


def test_compiled_step_from_the_command_line(tmp_path):
    """The command line loads the objectives before torch (their imports are deferred): compile: step must resolve
    those imports before tracing, or the first step imports inside the compiled region and dynamo gives up."""
    recipe = tiny(tmp_path, 'cli_step', steps=2, epochs=None, compile='step', model={'name': 'cifar_resnet20'},
                  eval={'at_end': False, 'every_epochs': 0})
    r = _run([sys.executable, '-m', 'timm_lipschitz.cli', 'train', '--recipe', str(_write(tmp_path, recipe, 'r.yaml')),
              '--no-progress'])
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads((tmp_path / 'cli_step' / 'final.json').read_text())['steps'] == 2


def test_sigkill_mid_epoch_then_resume_matches_uninterrupted(tmp_path):
    base = tiny(tmp_path, 'killed', epochs=3, batch_size=32, checkpoint={'every_steps': 10, 'keep': 3},
                eval={'at_end': False, 'every_epochs': 0})
    ref = dict(base, name='ref', output_dir=str(tmp_path / 'ref'))
    r = _run([sys.executable, '-m', 'timm_lipschitz.train', '--recipe', str(_write(tmp_path, ref, 'ref.yaml')),
              '--no-progress'])
    assert r.returncode == 0, r.stderr[-2000:]

    recipe_path = _write(tmp_path, base, 'killed.yaml')
    out = Path(base['output_dir'])
    proc = subprocess.Popen([sys.executable, '-m', 'timm_lipschitz.train', '--recipe', str(recipe_path),
                             '--no-progress'], cwd=ROOT, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    deadline = time.time() + 300
    while not (out / 'state' / 'step_00000010').is_dir():
        assert proc.poll() is None and time.time() < deadline, 'training ended before its first checkpoint'
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / 'final.json').exists()
    saved = latest_state(out)
    steps_per_epoch = 1437 // 32
    assert int(saved.name.split('_')[1]) % steps_per_epoch != 0  # killed mid-epoch

    r = _run([sys.executable, '-m', 'timm_lipschitz.train', '--recipe', str(recipe_path), '--resume',
              '--no-progress'])
    assert r.returncode == 0, r.stderr[-2000:]
    m = [line for line in (r.stdout + r.stderr).splitlines() if 'skipping' in line]
    assert m and 'skipping 10 batches' in m[0] or 'skipping' in m[0]
    skipped = int(m[0].split('skipping ')[1].split()[0])
    assert skipped == int(saved.name.split('_')[1]) % steps_per_epoch
    a = load_file(str(out / 'model.safetensors'))
    b = load_file(str(tmp_path / 'ref' / 'model.safetensors'))
    for k in b:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)


def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def test_two_process_cpu_run_matches_one_process(tmp_path):
    base = tiny(tmp_path, 'one', steps=12, epochs=None, eval={'sigmas': '0:0.5:0.25', 'every_epochs': 0})
    two = dict(base, name='two', output_dir=str(tmp_path / 'two'))
    r1 = _run([sys.executable, '-m', 'timm_lipschitz.train', '--recipe', str(_write(tmp_path, base, 'one.yaml')),
               '--no-progress'])
    assert r1.returncode == 0, r1.stderr[-2000:]
    torchrun = Path(sys.executable).parent / 'torchrun'
    r2 = _run([str(torchrun), '--nproc_per_node', '2', '--master_addr', '127.0.0.1', '--master_port',
               str(_free_port()), '-m', 'timm_lipschitz.train', '--recipe', str(_write(tmp_path, two, 'two.yaml')),
               '--no-progress'])
    assert r2.returncode == 0, (r2.stdout + r2.stderr)[-3000:]
    log = r2.stdout + r2.stderr
    for rank in (0, 1):
        assert f'[rank {rank}] num_processes=2 distributed_type=MULTI_CPU' in log
    assert json.loads((tmp_path / 'two' / 'final.json').read_text())['num_processes'] == 2
    a = load_file(str(tmp_path / 'one' / 'model.safetensors'))
    b = load_file(str(tmp_path / 'two' / 'model.safetensors'))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-5)
    # the end-of-run noise sweep split over 2 processes sees the same noisy images (keyed by image index)
    r1 = json.loads((tmp_path / 'one' / 'robustness.json').read_text())['robustness']
    r2 = json.loads((tmp_path / 'two' / 'robustness.json').read_text())['robustness']
    assert r2['num_images'] == r1['num_images'] == 360
    assert r2['accuracy'] == pytest.approx(r1['accuracy'], abs=100 / 360 + 1e-9)


def test_accelerate_launch_runs_a_recipe(tmp_path):
    recipe = _write(tmp_path, tiny(tmp_path, 'launched', steps=3, epochs=None, eval__at_end=False))
    accelerate = Path(sys.executable).parent / 'accelerate'
    r = _run([str(accelerate), 'launch', '--config_file', str(ROOT / 'recipes/accelerate/cpu.yaml'), '-m',
              'timm_lipschitz.train', '--recipe', str(recipe), '--no-progress'])
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert (tmp_path / 'launched' / 'final.json').is_file()


def test_console_script_and_bad_recipe_message(tmp_path):
    bad = _write(tmp_path, {'epochs': 1, 'optimiser': {'lr': 0.1}}, 'bad.yaml')
    r = _run([sys.executable, '-m', 'timm_lipschitz.cli', 'train', '--recipe', str(bad)])
    assert r.returncode == 2 and "unknown recipe key 'optimiser'" in r.stderr


# ---- recipes --------------------------------------------------------------------------------------------------------
SHIPPED = sorted(p for p in (ROOT / 'recipes').rglob('*.yaml') if not {'accelerate', 'grids'} & set(p.parts))


def test_recipes_are_shipped():
    """Every recipe and grid the README, the topic pages and the benchmarks name exists and resolves; the README's demo pair differs
    only in the objective (the hinge at the paper's best sigma_test 0.5 setting)."""
    import re
    from timm_lipschitz.sweep import expand_grid, load_grid
    docs = ''.join(p.read_text() for p in [ROOT / 'README.md', ROOT / 'benchmarks' / 'README.md',
                                          *sorted((ROOT / 'docs').glob('*.md'))])
    named = sorted(set(re.findall(r'recipes/[\w/]+\.yaml', docs)))
    assert len(named) >= 8, named
    for rel in named:
        path = ROOT / rel
        assert path.is_file(), f'{rel} is named in the docs but does not exist'
        if 'accelerate/' in rel:
            continue
        if 'grids/' in rel:
            assert expand_grid(load_grid(path))
        else:
            resolve_recipe(path)
    std, hinge = (resolve_recipe(ROOT / f'recipes/digits_{n}.yaml') for n in ('standard', 'lipschitz'))
    assert hinge['loss'] == {'name': 'lipschitz_hinge', 'sigma': 0.5, 'beta': 1.0, 'lipschitz_target': 0.01}
    assert std['loss'] == {'name': 'cross_entropy'}
    differ = {k for k in std if std[k] != hinge[k]}
    assert differ == {'name', 'description', 'loss', 'output_dir'}, differ


@pytest.mark.parametrize('path', SHIPPED, ids=lambda p: p.relative_to(ROOT / 'recipes').as_posix())
def test_every_shipped_recipe_validates(path):
    recipe = resolve_recipe(path)
    assert recipe['model']['name'] and recipe['loss']['name']


@pytest.mark.parametrize('raw,message', [
    ({'epochs': 1, 'optimiser': {}}, "unknown recipe key 'optimiser'"),
    ({'epochs': 1, 'data': {'nam': 'digits'}}, "unknown recipe key 'data.nam'"),
    ({'epochs': 'ten'}, "epochs must be int or null, got 'ten'"),
    ({'epochs': 1, 'loss': {'name': 'lipschitz_hinge', 'gamma': 1}}, 'unknown recipe key loss.gamma'),
    ({'epochs': 1, 'loss': {'name': 'nope'}}, "loss.name: unknown loss 'nope'"),
    ({'epochs': 1, 'steps': 5}, 'exactly one of epochs or steps'),
    ({'epochs': 1, 'precision': 'fp8'}, "precision='fp8' is not allowed"),
    ({'epochs': 1, 'eval': {'sigmas': '0:0.5:0'}}, 'eval.sigmas'),
    ({'epochs': 1, 'data': {'train_fraction': 0}}, 'train_fraction=0'),
    ({'epochs': 1, 'batch_size': 1.5}, 'batch_size must be int'),
])
def test_recipe_validation_names_the_key(raw, message):
    with pytest.raises(RecipeError, match=message.replace('(', r'\(').replace('[', r'\[')):
        resolve_recipe(raw)


def test_extends_and_overrides(tmp_path):
    (tmp_path / 'base.yaml').write_text(yaml.safe_dump({'epochs': 3, 'loss': {'name': 'lipschitz_hinge',
                                                                              'sigma': 0.5, 'beta': 5.0}}))
    (tmp_path / 'child.yaml').write_text(yaml.safe_dump({'extends': 'base.yaml', 'name': 'c',
                                                         'loss': {'beta': 1.0}}))
    r = resolve_recipe(tmp_path / 'child.yaml', ['loss.lipschitz_target=0.01', 'data.input_size=[1,32,32]'])
    assert r['loss'] == {'name': 'lipschitz_hinge', 'sigma': 0.5, 'beta': 1.0, 'lipschitz_target': 0.01}
    assert r['epochs'] == 3 and r['data']['input_size'] == [1, 32, 32] and r['output_dir'] == 'runs/c'
    r2 = resolve_recipe(tmp_path / 'child.yaml', ['loss={name: cross_entropy}'])
    assert r2['loss'] == {'name': 'cross_entropy'}
    # a whole-section override (a grid's include) keeps the defaults of the keys it does not name
    r3 = resolve_recipe(tmp_path / 'child.yaml', ['model={name: mnist_convnet, mean: [0.0], std: [1.0]}'])
    assert r3['model'] == {'name': 'mnist_convnet', 'mean': [0.0], 'std': [1.0], 'pretrained': False, 'kwargs': {},
                           'checkpoint': None}


def test_torch_compile_trains_and_saves_plain_weights(tmp_path):
    s = train(tiny(tmp_path, 'compiled', steps=3, epochs=None, compile=True,
                   eval={'at_end': False, 'every_epochs': 0}), progress=False)
    import timm
    m = timm.create_model(f"local-dir:{s['output_dir']}", pretrained=True)  # no _orig_mod. prefixes
    assert m(torch.rand(2, 1, 8, 8)).shape == (2, 10)


def test_finetune_recipe_trains_a_stock_timm_model_from_a_local_checkpoint(tmp_path):
    """The shipped fine-tune recipe, a few steps on a generated image folder: timm's resnet18 at 224 px starts from
    the given weights file (classifier replaced for 2 classes) and keeps its own (ImageNet) normalization."""
    import numpy as np
    import timm
    from PIL import Image
    from safetensors.torch import save_file
    for split in ('train', 'val'):
        for ci, cls in enumerate(('ant', 'bee')):
            (tmp_path / 'images' / split / cls).mkdir(parents=True)
            for i in range(4):
                rng = np.random.default_rng(10 * ci + i)
                Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(
                    tmp_path / 'images' / split / cls / f'{i}.jpg')
    torch.manual_seed(1)
    source = timm.create_model('resnet18')  # stands in for downloaded ImageNet weights (1,000 classes)
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(tmp_path / 'resnet18.safetensors'))
    s = train(str(ROOT / 'recipes' / 'finetune' / 'resnet18_imagefolder_lipschitz.yaml'), [
        f'data.root={tmp_path / "images"}', f'model.checkpoint={tmp_path / "resnet18.safetensors"}', 'steps=2',
        'epochs=null', 'batch_size=4', 'data.num_workers=0', 'schedule.warmup_epochs=0', 'eval.sigmas=[0.0, 0.25]',
        f'output_dir={tmp_path / "run"}'], progress=False)
    assert s['steps'] == 2 and s['dataset'] == 'imagefolder' and s['objective'] == 'lipschitz_hinge'
    tuned = timm.create_model(f'local-dir:{tmp_path / "run"}', pretrained=True)
    assert tuned.num_classes == 2 and tuned.pretrained_cfg['input_size'] == (3, 224, 224)
    assert tuned.pretrained_cfg['mean'] == pytest.approx((0.485, 0.456, 0.406))
    assert list(tuned.pretrained_cfg['label_names']) == ['ant', 'bee']
    start = source.state_dict()['conv1.weight']
    moved = (tuned.state_dict()['conv1.weight'] - start).abs().max()
    assert moved < 0.05 * start.abs().max()  # fine-tuned from the file, not from a fresh initialization


def test_compiled_step_equals_eager_and_keeps_the_noise_stream():
    """compile: step compiles the objective's computation; its noise is drawn eagerly from the same generator, so
    loss and gradients equal the eager ones (to float rounding of the fused kernels: rel 1e-4) and the stream moves
    on identically."""
    import timm
    from timm_lipschitz.losses import create_loss
    from timm_lipschitz.train import compile_step
    torch.manual_seed(0)
    model = timm.create_model('mnist_convnet', img_size=8, hidden_dim=16,
                              pretrained_cfg_overlay=dict(input_size=(1, 8, 8))).train()
    x, y = torch.rand(8, 1, 8, 8), torch.randint(0, 10, (8,))
    eager, compiled = (create_loss('lipschitz_hinge', sigma=0.3, beta=1.0, lipschitz_target=0.05, seed=3)
                       for _ in range(2))
    step = compile_step(compiled)
    for _ in range(2):  # the second call checks the stream moved on the same way
        model.zero_grad()
        a = eager(model, x, y)
        a.loss.backward()
        grads = [p.grad.clone() for p in model.parameters()]
        model.zero_grad()
        b = step(model, x, y)
        b.loss.backward()
        torch.testing.assert_close(b.loss, a.loss, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(b.parts['k_mean'], a.parts['k_mean'], rtol=1e-4, atol=1e-6)
        for g, p in zip(grads, model.parameters()):
            torch.testing.assert_close(p.grad, g, rtol=1e-3, atol=1e-5)
        assert torch.equal(eager.state_dict()['generator'], compiled.state_dict()['generator'])


def test_gpu_only_options_are_refused_on_a_cpu(tmp_path):
    if torch.cuda.is_available():
        pytest.skip('this machine has CUDA')
    with pytest.raises(RecipeError, match=r"compile_mode='reduce-overhead' captures CUDA graphs and needs a CUDA GPU"):
        train(tiny(tmp_path, compile='step', compile_mode='reduce-overhead'), progress=False)
    s = train(tiny(tmp_path, 'fused', steps=3, epochs=None, optimizer={'name': 'sgd', 'lr': 0.05, 'fused': True},
                   eval={'at_end': False, 'every_epochs': 0}), progress=False)
    assert s['steps'] == 3  # the fused optimizer runs on a CPU too


def _strict(text: str):
    def refuse(constant):
        raise ValueError(f'{constant} in JSON')
    return json.loads(text, parse_constant=refuse)


def test_threads_auto_shares_the_cpus_among_the_local_processes_and_refuses_nonsense():
    from timm_lipschitz.recipes import RecipeError, resolve_recipe
    from timm_lipschitz.train import cpu_threads
    assert cpu_threads('auto', 1, environ={}, cpus=8) == 8
    assert cpu_threads('auto', 2, environ={}, cpus=8) == 4
    assert cpu_threads('auto', 4, environ={}, cpus=2) == 1
    assert cpu_threads('auto', 1, environ={'OMP_NUM_THREADS': '3'}, cpus=8) is None  # the user's variable stands
    assert cpu_threads(2, 1, environ={'OMP_NUM_THREADS': '3'}, cpus=8) == 2          # the recipe's number wins
    assert resolve_recipe('recipes/digits_lipschitz.yaml')['threads'] == 'auto'
    for bad in ('0', '-1', 'many'):
        with pytest.raises(RecipeError, match=r"threads=.* is not allowed; give 'auto'"):
            resolve_recipe('recipes/digits_lipschitz.yaml', [f'threads={bad}'])
    for bad in ('1.5', 'true'):
        with pytest.raises(RecipeError, match=r'threads must be int or str, got'):
            resolve_recipe('recipes/digits_lipschitz.yaml', [f'threads={bad}'])


def test_a_dataloader_run_with_augmentation_resumes_exactly(tmp_path):
    """0.2.0: fast_path false + augmentation, stopped and resumed, ended 0.014-0.467 away from the uninterrupted run."""
    from timm_lipschitz.train.loop import StoppedAsAsked
    r = lambda out: tiny_recipe(out, steps=60, loss={'name': 'lipschitz_hinge', 'sigma': 0.3},  # noqa: E731
                         data={'name': 'digits', 'input_size': [1, 8, 8], 'fast_path': False,
                               'augmentation': 'cifar', 'num_workers': 0})
    train(r(tmp_path / 'a'), progress=False)
    with pytest.raises(StoppedAsAsked):
        train(r(tmp_path / 'b'), progress=False, stop_at_step=50)  # inside the second epoch
    train(r(tmp_path / 'b'), resume=True, progress=False)
    assert max_weight_diff(tmp_path / 'a', tmp_path / 'b') == 0.0


def test_no_output_file_holds_nan_or_infinity(tmp_path):
    from timm_lipschitz.fileio import NON_FINITE_KEY, atomic_write_json
    atomic_write_json(tmp_path / 'x.json', {'acr': float('nan'), 'radii': [0.5, float('-inf')], 'ok': 1.5})
    data = _strict((tmp_path / 'x.json').read_text())
    assert data['acr'] is None and data['radii'] == [0.5, None] and data['ok'] == 1.5
    assert set(data[NON_FINITE_KEY]) == {'acr', 'radii[1]'} and 'not a finite number' in data[NON_FINITE_KEY]['acr']


def test_a_jsonl_metrics_row_with_nan_is_valid_json(tmp_path):
    from timm_lipschitz.train import JsonlTracker
    tracker = JsonlTracker(tmp_path / 'metrics.jsonl')
    tracker.log({'train/k_max': float('inf'), 'train/loss': torch.tensor(1.0)}, step=3)
    row = _strict((tmp_path / 'metrics.jsonl').read_text().strip())
    assert row['train/k_max'] is None and row['train/loss'] == 1.0 and row['step'] == 3

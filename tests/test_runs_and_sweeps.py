"""Runs, sweeps and cluster jobs never lose or mix results and never touch what the project did not write: each
test reproduces a case that 0.2.0 got wrong (overwrote a user's file, left a stub that blocked the corrected run,
tabulated stale or lost sweep points, replaced a grid's section, kept an untrue record on resume, resumed the
DataLoader path inexactly, reshuffled an imagefolder hold-out, read duplicate recipe keys, imported plugins from
the current directory, requeued a failed SLURM task forever, lost the exit-75 contract in the final evaluation)."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from timm_lipschitz.recipes import RecipeError, resolve_recipe
from timm_lipschitz.runs import RunFolderError
from timm_lipschitz.train import train

ROOT = Path(__file__).resolve().parent.parent


def tiny(out, **over):
    recipe = {'name': 'tiny', 'model': {'name': 'mnist_convnet', 'kwargs': {'hidden_dim': 16}},
              'data': {'name': 'digits', 'input_size': [1, 8, 8], 'fast_path': True},
              'loss': {'name': 'cross_entropy'}, 'optimizer': {'name': 'sgd', 'lr': 0.05},
              'steps': 6, 'batch_size': 32, 'eval': {'sigmas': [0.0, 0.3], 'every_epochs': 0}, 'log_with': [],
              'output_dir': str(out)}
    recipe.update(over)
    return recipe


def _env(**extra):
    return dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=str(ROOT), HF_HUB_OFFLINE='1', **extra)


def _cli(*argv, cwd=None, env=None):
    return subprocess.run([sys.executable, '-m', 'timm_lipschitz.cli', *map(str, argv)], capture_output=True,
                          text=True, cwd=cwd, env=env or _env(), timeout=600)


def _max_diff(a, b):
    wa, wb = load_file(str(Path(a) / 'model.safetensors')), load_file(str(Path(b) / 'model.safetensors'))
    return max((wa[k].float() - wb[k].float()).abs().max().item() for k in wa)


# ---- never overwrite what the project did not write -----------------------------------------------------------------
def test_a_folder_with_someone_elses_files_is_refused_naming_them(tmp_path):
    out = tmp_path / 'p'
    out.mkdir()
    (out / 'README.md').write_text('mine\n')
    (out / 'config.json').write_text('{"mine": true}\n')
    for resume in (False, True):
        with pytest.raises(RunFolderError, match=r'is not empty and holds no run \(README\.md, config\.json\)'):
            train(tiny(out), resume=resume, progress=False)
    assert (out / 'README.md').read_text() == 'mine\n' and sorted(p.name for p in out.iterdir()) == \
        ['README.md', 'config.json']


def test_a_recipe_refused_after_the_claim_leaves_no_stub(tmp_path):
    """0.2.0 left recipe.yaml behind: the corrected run was refused ('already holds an unfinished run')."""
    out = tmp_path / 'run'
    with pytest.raises(RecipeError, match='batch_size=32 must be divisible'):
        train(tiny(out, gradient_accumulation_steps=7), progress=False)
    assert not out.exists() or list(out.iterdir()) == []
    assert train(tiny(out), progress=False)['steps'] == 6


# ---- sweeps ---------------------------------------------------------------------------------------------------------
def _grid(tmp_path, steps=2, seeds=None, extra=None):
    base = tiny(tmp_path / 'unused', steps=steps, optimizer={'name': 'sgd', 'lr': 0.05, 'weight_decay': 0.0005})
    base.pop('output_dir')
    (tmp_path / 'base.yaml').write_text(yaml.safe_dump(base))
    grid = {'name': 'g', 'base': 'base.yaml', 'output_dir': str(tmp_path / 'sweep'),
            'axes': {'loss.name': ['cross_entropy']}, **(extra or {})}
    if seeds is not None:
        grid['seeds'] = seeds
    (tmp_path / 'grid.yaml').write_text(yaml.safe_dump(grid))
    return tmp_path / 'grid.yaml'


def test_a_stale_point_is_reported_never_tabulated_and_rerun_only_on_request(tmp_path, capsys):
    from timm_lipschitz.sweep import run_sweep
    run_sweep(_grid(tmp_path, steps=2))
    path = _grid(tmp_path, steps=3)  # the grid edited after its point ran
    results = run_sweep(path)
    assert results['rows'] == [] and list(results['stale']) == ['namecrossentropy'] and 'steps' in \
        results['stale']['namecrossentropy']
    assert '[stale] namecrossentropy (differs in steps)' in capsys.readouterr().out
    results = run_sweep(path, rerun_stale=True)
    assert [r['final']['steps'] for r in results['rows']] == [3] and not results['stale']
    kept = tmp_path / 'sweep' / 'namecrossentropy.stale-1'
    assert json.loads((kept / 'final.json').read_text())['steps'] == 2  # the old run is kept, not deleted


def test_a_seed_filter_never_loses_results_and_one_that_selects_nothing_is_an_error(tmp_path):
    from timm_lipschitz.sweep import GridError, run_sweep
    path = _grid(tmp_path, seeds=[0, 1])
    run_sweep(path, seeds=[0])
    results = run_sweep(path, seeds=[1])  # the README's workflow: 0.2.0 kept seed 1 only
    assert sorted(r['point'] for r in results['rows']) == ['namecrossentropy_seed0', 'namecrossentropy_seed1']
    written = (tmp_path / 'sweep' / 'results.json').read_text()
    with pytest.raises(GridError, match=r'--seeds \[5\] selects no point of this grid \(its seeds: \[0, 1\]\)'):
        run_sweep(path, seeds=[5])
    with pytest.raises(GridError, match='selects no point'):
        run_sweep(path, seeds=[5], emit_commands=True, slurm={'path': str(tmp_path / 'x.sbatch')})
    assert (tmp_path / 'sweep' / 'results.json').read_text() == written and not (tmp_path / 'x.sbatch').exists()
    (tmp_path / 'noseeds').mkdir()
    with pytest.raises(GridError, match='the grid has no seeds axis'):
        run_sweep(_grid(tmp_path / 'noseeds'), seeds=[0])


def test_a_grid_mapping_merges_into_the_base_section(tmp_path):
    """0.2.0: set: {optimizer: {lr: 0.01}} replaced the section, so weight decay 0.0005 became the default 0.0001."""
    from timm_lipschitz.sweep import expand_grid, load_grid
    from timm_lipschitz.sweep.grid import _overrides
    grid = load_grid(_grid(tmp_path, extra={'set': {'optimizer': {'lr': 0.01}},
                                            'include': [{'loss': {'name': 'lipschitz_hinge', 'sigma': 0.5}}]}))
    recipes = [resolve_recipe(grid['base'], _overrides(grid, p, str(tmp_path / 'x'))) for p in expand_grid(grid)]
    assert all(r['optimizer']['lr'] == 0.01 and r['optimizer']['weight_decay'] == 0.0005 for r in recipes)
    assert recipes[1]['loss'] == {'name': 'lipschitz_hinge', 'sigma': 0.5}  # another loss starts its section clean


# ---- resume keeps the record true -------------------------------------------------------------------------------------
def test_a_finished_run_is_not_resumed_shorter(tmp_path):
    out = tmp_path / 'run'
    train(tiny(out), progress=False)
    with pytest.raises(RunFolderError, match='with steps=3: the run has trained 6 steps already'):
        train(tiny(out, steps=3), resume=True, progress=False)
    assert json.loads((out / 'final.json').read_text())['steps'] == 6 and yaml.safe_load(
        (out / 'recipe.yaml').read_text())['steps'] == 6


def test_a_run_resumed_with_more_steps_records_the_commands_that_reproduce_it(tmp_path):
    """--resume --set steps=20 on a 10-step cosine run: one command from the final recipe gives other weights."""
    from timm_lipschitz.cli import main
    r = tiny(tmp_path / 'run', steps=10, schedule={'name': 'cosine'},
             data={'name': 'digits', 'input_size': [1, 8, 8], 'fast_path': True, 'train_fraction': 0.1})
    (tmp_path / 'r.yaml').write_text(yaml.safe_dump(r))
    assert main(['train', '--recipe', str(tmp_path / 'r.yaml'), '--no-progress']) == 0
    assert main(['train', '--recipe', str(tmp_path / 'r.yaml'), '--set', 'steps=20', '--resume', '--no-progress']) == 0
    final = json.loads((tmp_path / 'run' / 'final.json').read_text())
    assert len(final['commands']) == 2 and '--stop-at-step 10' in final['commands'][0]
    assert final['command'] == ' && '.join(final['commands']) and final['command'] in \
        (tmp_path / 'run' / 'README.md').read_text()
    for command in final['commands']:
        assert main(command.split()[1:] + ['--no-progress']) == 0
    assert _max_diff(tmp_path / 'run', str(tmp_path / 'run') + '_reproduced') == 0.0
    assert main(['train', '--recipe', str(tmp_path / 'r.yaml'), '--set', 'steps=20', '--output-dir',
                 str(tmp_path / 'direct'), '--no-progress']) == 0
    assert _max_diff(tmp_path / 'run', tmp_path / 'direct') > 1e-4  # why one command is not the record


def _image_folder(root, shade=0):
    import numpy as np
    from PIL import Image
    for ci, cls in enumerate(('a', 'b')):
        (root / cls).mkdir(parents=True)
        for i in range(20):
            Image.fromarray(np.full((8, 8, 3), (40 * ci + 2 * i + shade) % 256, np.uint8)).save(root / cls / f'{i}.png')


def test_a_resume_reads_its_data_from_a_new_root_only_when_it_is_the_same_data(tmp_path):
    _image_folder(tmp_path / 'a')
    shutil.copytree(tmp_path / 'a', tmp_path / 'b')
    _image_folder(tmp_path / 'c', shade=1)
    data = lambda root: {'name': 'imagefolder', 'root': str(root), 'input_size': [3, 8, 8], 'fast_path': True}  # noqa
    out = tmp_path / 'run'
    train(tiny(out, data=data(tmp_path / 'a'), batch_size=8), progress=False)
    with pytest.raises(RunFolderError, match=r"data\.root='.*c' is not the one .* started with"):
        train(tiny(out, steps=8, batch_size=8, data=data(tmp_path / 'c')), resume=True, progress=False)
    assert train(tiny(out, steps=8, batch_size=8, data=data(tmp_path / 'b')), resume=True,
                 progress=False)['steps'] == 8


def test_a_dataloader_run_with_augmentation_resumes_exactly(tmp_path):
    """0.2.0: fast_path false + augmentation, stopped and resumed, ended 0.014-0.467 away from the uninterrupted run."""
    from timm_lipschitz.train.loop import StoppedAsAsked
    r = lambda out: tiny(out, steps=60, loss={'name': 'lipschitz_hinge', 'sigma': 0.3},  # noqa: E731
                         data={'name': 'digits', 'input_size': [1, 8, 8], 'fast_path': False,
                               'augmentation': 'cifar', 'num_workers': 0})
    train(r(tmp_path / 'a'), progress=False)
    with pytest.raises(StoppedAsAsked):
        train(r(tmp_path / 'b'), progress=False, stop_at_step=50)  # inside the second epoch
    train(r(tmp_path / 'b'), resume=True, progress=False)
    assert _max_diff(tmp_path / 'a', tmp_path / 'b') == 0.0


# ---- recipe files and plugins -----------------------------------------------------------------------------------------
@pytest.mark.parametrize('content,message', [
    ('name: a\nsteps: 2\nname: b\n', r"duplicate key 'name' at lines 1 and 3"),
    ('', 'is empty'),
    (b'\x00\x01binary', 'is a binary file, not YAML text'),
    ('a: ' + 'x' * (2 ** 20 + 10) + '\n', r'has 1,048,\d+ bytes; a recipe is at most 1,048,576 bytes'),
])
def test_recipe_files_that_are_not_recipes_get_messages_that_say_so(tmp_path, content, message):
    path = tmp_path / 'r.yaml'
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(RecipeError, match=message):
        resolve_recipe(path)
    with pytest.raises(RecipeError, match='is a directory'):
        resolve_recipe(tmp_path)


def test_plugins_from_the_current_directory_need_consent(tmp_path):
    (tmp_path / 'evil.py').write_text("open('ran', 'w').write('yes')\n")
    recipe = {'extends': str(ROOT / 'recipes' / 'digits_standard.yaml'), 'plugins': ['evil'],
              'model': {'name': 'no_such_model'}}
    (tmp_path / 'r.yaml').write_text(yaml.safe_dump(recipe))
    refused = subprocess.run([sys.executable, '-m', 'timm_lipschitz.train', '--recipe', 'r.yaml'], cwd=tmp_path,
                             capture_output=True, text=True, env=_env(), timeout=600)
    assert refused.returncode == 2 and "plugins: 'evil' would be imported from" in refused.stderr
    assert not (tmp_path / 'ran').exists()
    trusted = subprocess.run([sys.executable, '-m', 'timm_lipschitz.train', '--recipe', 'r.yaml',
                              '--trust-local-plugins'], cwd=tmp_path, capture_output=True, text=True, env=_env(),
                             timeout=600)
    assert (tmp_path / 'ran').read_text() == 'yes' and f'plugins: imported evil from {tmp_path / "evil.py"}' in \
        trusted.stderr and "model.name='no_such_model'" in trusted.stderr


# ---- the SLURM script ---------------------------------------------------------------------------------------------------
def _slurm(tmp_path, **extra):
    from timm_lipschitz.cli import main
    path = _grid(tmp_path)
    script = tmp_path / 'jobs.sbatch'
    assert main(['sweep', str(path), '--emit-commands', '--slurm', str(script), *extra.get('argv', [])]) == 0
    bin_dir = tmp_path / 'bin'
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / 'scontrol').write_text(f'#!/bin/bash\necho "$@" >> {tmp_path}/requeued\n')
    (bin_dir / 'scontrol').chmod(0o755)
    return script, _env(PATH=f'{bin_dir}:{os.environ["PATH"]}', SLURM_ARRAY_JOB_ID='7', SLURM_ARRAY_TASK_ID='0')


def test_the_slurm_script_never_requeues_a_task_that_failed_before_stopping(tmp_path):
    script, env = _slurm(tmp_path)
    assert (tmp_path / 'sweep' / 'slurm').is_dir()  # SLURM opens its log there before the script runs
    text = script.read_text()
    assert f'run={tmp_path.resolve()}/sweep' in text
    run = tmp_path / 'sweep' / 'namecrossentropy'
    run.mkdir(parents=True)
    (run / 'recipe.yaml').write_text(yaml.safe_dump({**tiny(run), 'seed': 9}))  # its resume will be refused
    (run / 'stopped.json').write_text('{}')  # left by an earlier attempt
    done = subprocess.run(['bash', str(script)], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 2 and 'seed: 9 -> 0' in done.stderr and not (tmp_path / 'requeued').exists()


def test_the_slurm_script_stops_requeueing_after_the_stated_number(tmp_path):
    script, env = _slurm(tmp_path, argv=['--max-requeues', '3'])
    text = script.read_text().replace('setsid bash -c "exec ${COMMANDS[$task]}" &',
                                      'setsid bash -c "echo {} > $run/stopped.json" &')  # a task that stops
    script.write_text(text)
    (tmp_path / 'sweep' / 'namecrossentropy').mkdir(parents=True)
    again = subprocess.run(['bash', str(script)], env=dict(env, SLURM_RESTART_COUNT='1'), capture_output=True,
                           text=True, timeout=60)
    assert again.returncode == 0 and (tmp_path / 'requeued').read_text().split() == ['requeue', '7_0']
    over = subprocess.run(['bash', str(script)], env=dict(env, SLURM_RESTART_COUNT='3'), capture_output=True,
                          text=True, timeout=60)
    assert over.returncode == 75 and 'requeued 3 times already (at most 3)' in over.stderr
    assert (tmp_path / 'requeued').read_text().split() == ['requeue', '7_0']


# ---- signals and errors in every phase ---------------------------------------------------------------------------------
_TERM_IN_FINAL_EVAL = textwrap.dedent('''
    import os, signal, sys
    import timm_lipschitz.train.outputs as outputs
    real = outputs.evaluate_clean
    def evaluate_clean(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)  # the scheduler's signal, during the end-of-run evaluation
        return real(*args, **kwargs)
    outputs.evaluate_clean = evaluate_clean
    from timm_lipschitz.cli import main
    sys.exit(main(['train', '--recipe', sys.argv[1], '--no-progress']))
''')


def test_a_stop_signal_in_the_final_evaluation_keeps_the_exit_75_contract(tmp_path):
    (tmp_path / 'r.yaml').write_text(yaml.safe_dump(tiny(tmp_path / 'run')))
    stopped = subprocess.run([sys.executable, '-c', _TERM_IN_FINAL_EVAL, str(tmp_path / 'r.yaml')], env=_env(),
                             capture_output=True, text=True, timeout=600)
    run = tmp_path / 'run'
    assert stopped.returncode == 75, stopped.stderr[-2000:]
    assert json.loads((run / 'stopped.json').read_text())['step'] == 6 and not (run / 'run.lock').exists()
    assert not (run / 'final.json').exists() and (run / 'state' / 'step_00000006').is_dir()
    resumed = _cli('train', '--recipe', tmp_path / 'r.yaml', '--resume', '--no-progress')
    assert resumed.returncode == 0 and json.loads((run / 'final.json').read_text())['steps'] == 6


def test_ctrl_c_prints_one_line_and_the_last_saved_state(tmp_path):
    import time
    (tmp_path / 'r.yaml').write_text(yaml.safe_dump(tiny(tmp_path / 'run', steps=100000,
                                                         checkpoint={'every_steps': 5})))
    proc = subprocess.Popen([sys.executable, '-m', 'timm_lipschitz.cli', 'train', '--recipe', str(tmp_path / 'r.yaml'),
                             '--no-progress'], env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not list((tmp_path / 'run' / 'state').glob('step_*')) if (tmp_path / 'run' / 'state').is_dir() else True:
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and 'Traceback' not in err
    assert 'interrupted: the last complete state is' in err and 'continue with --resume' in err
    assert not (tmp_path / 'run' / 'run.lock').exists()


def test_a_read_only_folder_gets_the_message_of_a_full_disk(tmp_path, monkeypatch):
    import errno
    from timm_lipschitz.runs import RunClaim, StateSaveError

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, 'Read-only file system')
    monkeypatch.setattr(os, 'open', read_only)
    with pytest.raises(StateSaveError, match=r'could not write the run claim in .*Read-only file system.*MiB are free'):
        RunClaim(tmp_path / 'run').acquire()


def test_an_empty_claim_says_it_is_empty(tmp_path):
    out = tmp_path / 'run'
    out.mkdir()
    (out / 'run.lock').write_text('')
    with pytest.raises(RunFolderError, match=r'run\.lock is empty .* names no process.*delete'):
        train(tiny(out), progress=False)


def test_a_negative_seed_is_refused_naming_the_key(tmp_path):
    from timm_lipschitz.sweep import GridError, run_sweep
    with pytest.raises(RecipeError, match=r'seed=-1 is not allowed; it must be an integer from 0'):
        resolve_recipe(tiny(tmp_path / 'run', seed=-1))
    with pytest.raises(GridError, match=r'seed=-1 is not allowed'):
        run_sweep(_grid(tmp_path, seeds=[-1]), dry_run=True)


def test_the_keyed_augmentation_differs_across_images_and_epochs_and_repeats_for_one_key():
    """An item's augmentation is a function of (seed, epoch, index): the same key gives the same crop, and the
    images of one epoch get their own crops (a stream that dropped the index gave all of them one crop)."""
    import torch
    from timm_lipschitz.data.transforms import train_transform
    t = train_transform('cifar', (1, 8, 8), seed=0)
    img = torch.arange(64, dtype=torch.uint8).view(1, 8, 8)
    epoch0 = [t(img, i) for i in range(24)]
    assert len({bytes(x.numpy()) for x in epoch0}) > 8 and torch.equal(t(img, 3), epoch0[3])
    t.set_epoch(1)
    assert sum(not torch.equal(t(img, i), epoch0[i]) for i in range(24)) > 8
    before = torch.get_rng_state()
    t(img, 0)
    assert torch.equal(torch.get_rng_state(), before)  # torch's global generator is left alone


def test_the_trainers_dataloader_tells_the_keyed_augmentation_each_epoch():
    """The epoch reaches the keyed transform through the sampler Accelerate sets, also once prepared."""
    import accelerate
    from timm_lipschitz.train.build import build_train_loader
    from timm_lipschitz.data import create_dataset
    ds, _ = create_dataset('digits', 'train', input_size=(1, 8, 8))
    recipe = tiny('unused', data={'name': 'digits', 'input_size': [1, 8, 8], 'fast_path': False,
                                  'augmentation': 'crop', 'num_workers': 0})
    recipe = resolve_recipe(recipe)
    accelerator = accelerate.Accelerator(cpu=True)
    loader = accelerator.prepare(build_train_loader(recipe, ds, 32, (1, 8, 8), accelerator))
    loader.set_epoch(3)
    assert ds.transform.epoch == 3

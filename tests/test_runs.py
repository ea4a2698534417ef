"""Runs never mix and recipes never corrupt training: the run-folder rules, resuming, and the recipe checks that
refuse a setting before any work (each case failed on 0.1.0: trained silently into the old folder, or trained
something else than asked)."""
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from helpers import child_env, max_weight_diff, tiny_recipe
from timm_lipschitz.folders import OutputError
from timm_lipschitz.recipes import RecipeError, resolve_recipe
from timm_lipschitz.runs import RunFolderError, read_metrics
from timm_lipschitz.train import latest_state, train

ROOT = Path(__file__).resolve().parent.parent


def tiny(out, **over):
    recipe = {'name': 'tiny', 'model': {'name': 'mnist_convnet', 'kwargs': {'hidden_dim': 16}},
              'data': {'name': 'digits', 'input_size': [1, 8, 8], 'fast_path': True},
              'loss': {'name': 'cross_entropy'}, 'optimizer': {'name': 'sgd', 'lr': 0.05}, 'schedule': {'name': 'none'},
              'steps': 10, 'batch_size': 32, 'eval': {'sigmas': [0.0, 0.3], 'every_epochs': 0}, 'log_with': [],
              'log_every_steps': 5, 'output_dir': str(out)}
    recipe.update(over)
    return recipe


def test_a_folder_holding_a_run_is_never_trained_into_again(tmp_path):
    """0.1.0: the Lipschitz run appended to the standard run's metrics and, on --resume, loaded its final state."""
    out = tmp_path / 'run'
    train(tiny(out), progress=False)
    lines = (out / 'metrics.jsonl').read_text()
    states = sorted(p.name for p in (out / 'state').iterdir())
    hinge = tiny(out, loss={'name': 'lipschitz_hinge', 'sigma': 0.5}, checkpoint={'every_steps': 2})
    with pytest.raises(RunFolderError, match=f'{out} already holds a finished run.*--resume.*--output-dir'):
        train(hinge, progress=False)
    assert (out / 'metrics.jsonl').read_text() == lines and sorted(p.name for p in (out / 'state').iterdir()) == states
    with pytest.raises(RunFolderError, match=r"loss\.name: 'cross_entropy' -> 'lipschitz_hinge'"):
        train(hinge, resume=True, progress=False)
    assert json.loads((out / 'final.json').read_text())['objective'] == 'cross_entropy'


def test_resume_allows_safe_changes_and_records_them(tmp_path):
    out = tmp_path / 'run'
    first = train(tiny(out), progress=False)
    with pytest.raises(RunFolderError, match=r'optimizer\.lr: 0\.05 -> 0\.5.*seed: 0 -> 1'):
        train(tiny(out, steps=20, optimizer={'name': 'sgd', 'lr': 0.5}, seed=1), resume=True, progress=False)
    s = train(tiny(out, steps=20, log_every_steps=3), resume=True, progress=False)
    assert s['steps'] == 20
    rows, _ = read_metrics(out / 'metrics.jsonl')
    changes = [r['event/resume_recipe_changes'] for r in rows if 'event/resume_recipe_changes' in r]
    assert changes == ['log_every_steps, steps']
    assert s['time_covers'] == 'the whole run (resumed at step 10)'
    # the whole run's images over the whole run's time
    assert s['images_seen'] == 20 * 32 and s['train_time_s'] > first['train_time_s']


def test_resuming_a_run_that_saved_no_state_starts_over_and_never_mixes(tmp_path):
    """checkpoint.every_steps: 0 and every_epochs: 0 keep no state at all; steps > 0 save every N steps."""
    out = tmp_path / 'none'
    train(tiny(out, checkpoint={'every_steps': 0, 'every_epochs': 0}), progress=False)
    assert latest_state(out) is None
    by_steps = tmp_path / 'steps'
    train(tiny(by_steps, checkpoint={'every_steps': 3, 'every_epochs': 0, 'keep': 10}), progress=False)
    assert sorted(p.name for p in (by_steps / 'state').iterdir()) == ['step_00000003', 'step_00000006',
                                                                     'step_00000009']


def test_eval_of_an_unfinished_run_says_so(tmp_path, capsys):
    from timm_lipschitz.cli import main
    run = tmp_path / 'killed'
    shutil.copytree(ROOT / 'tests' / 'fixtures' / 'v0_1_0' / 'unfinished', run)
    assert main(['eval', str(run), '--out', str(tmp_path / 'ev'), '--device', 'cpu']) == 2
    err = capsys.readouterr().err
    assert f'{run} holds an unfinished run (last state: step 50)' in err and '--resume' in err


@pytest.mark.parametrize('over,message', [
    ({'max_grad_norm': 0}, 'max_grad_norm=0 is not allowed; it must be > 0'),
    ({'max_grad_norm': -1.0}, 'max_grad_norm=-1.0 is not allowed'),
    ({'ema': {'enabled': True, 'decay': 1.5}}, r'ema\.decay=1\.5 is not allowed; it must be in \(0, 1\)'),
    ({'ema': {'enabled': True, 'decay': 0}}, r'ema\.decay=0 is not allowed'),
    ({'checkpoint': {'every_steps': -5}}, r'checkpoint\.every_steps=-5 is not allowed'),
    ({'eval': {'every_epochs': -1}}, r'eval\.every_epochs=-1 is not allowed'),
    ({'steps': None, 'epochs': 300, 'schedule': {'name': 'multistep', 'milestones': [225, 150]}},
     r'schedule\.milestones=\[225, 150\] is not allowed; give epochs >= 0 in increasing order'),
    ({'steps': None, 'epochs': 300, 'schedule': {'name': 'multistep', 'milestones': [150, 300]}},
     r'schedule\.milestones=\[150, 300\] is not allowed; every milestone must fall before the last epoch'),
    ({'log_with': ['wandb']}, r"log_with: tracker 'wandb' needs the wandb package"),
    ({'log_with': ['tensorbored']}, r"log_with='tensorbored' is not allowed; choose trackers among"),
    ({'loss': {'name': 'lipschitz_hinge', 'sigma': -0.5}}, r'loss\.sigma=-0\.5 is not allowed; sigma must be'),
    ({'loss': {'name': 'lipschitz_hinge', 'task_loss': {'name': 'cross_entropy', 'label_smoothing': 2}}},
     r'loss\.task_loss\.label_smoothing=2 is not allowed'),
    ({'optimizer': {'name': 'sgd', 'lr': 0}}, r'optimizer\.lr=0 is not allowed'),
    ({'model': {'name': 'mnist_convnet', 'mean': [0.5], 'std': [0.0]}}, r'model\.std=\[0\.0\] is not allowed'),
])
def test_settings_that_would_corrupt_training_are_refused(tmp_path, over, message):
    with pytest.raises(RecipeError, match=message):
        resolve_recipe(tiny(tmp_path / 'r', **over))


def test_milestones_beyond_a_step_limited_run_are_refused_before_training(tmp_path):
    recipe = tiny(tmp_path / 'r', schedule={'name': 'multistep', 'milestones': [5]})  # 10 steps: under 1 epoch
    with pytest.raises(RecipeError, match=r'schedule\.milestones=\[5\].*the run has 1 epochs'):
        train(recipe, progress=False)


def test_model_kwargs_and_machine_limits_are_checked_before_any_work(tmp_path):
    out = tmp_path / 'r'
    with pytest.raises(RecipeError, match=r"model\.kwargs=\{'hidden': 3\} are not all arguments of mnist_convnet"):
        train(tiny(out, model={'name': 'mnist_convnet', 'kwargs': {'hidden': 3}}), progress=False)
    if not torch.cuda.is_available():
        with pytest.raises(RecipeError, match=r"precision='fp16' needs a CUDA GPU"):
            train(tiny(out, precision='fp16'), progress=False)
        with pytest.raises(RecipeError, match=r'sync_batchnorm=True needs CUDA GPUs'):
            train(tiny(out, sync_batchnorm=True), progress=False)
    assert not out.exists()  # refused before the run folder was touched


def test_sync_batchnorm_is_torchs_conversion_before_prepare():
    import timm
    from timm_lipschitz.train import apply_model_options
    recipe = resolve_recipe(tiny('x', sync_batchnorm=True, model={'name': 'cifar_resnet20'}))
    model = apply_model_options(recipe, timm.create_model('cifar_resnet20'))
    kinds = {type(m).__name__ for m in model.modules() if 'BatchNorm' in type(m).__name__}
    assert kinds == {'SyncBatchNorm'}


def test_concurrent_claim_and_stale_claim(tmp_path):
    """A folder in use is refused; a claim left by a process that no longer exists is taken over with a notice."""
    import os
    import subprocess
    import sys
    from timm_lipschitz.runs import RunClaim
    out = tmp_path / 'run'
    first = RunClaim(out).acquire()
    with pytest.raises(RunFolderError, match=rf'run folder {out} is in use by process {os.getpid()}'):
        RunClaim(out).acquire()
    first.release()
    dead = subprocess.run([sys.executable, '-c', 'import os; print(os.getpid())'], capture_output=True, text=True)
    lock = json.loads((out / 'run.lock').read_text()) if (out / 'run.lock').exists() else {}
    assert not lock
    import socket
    (out / 'run.lock').write_text(json.dumps({'host': socket.gethostname(), 'pid': int(dead.stdout), 'pid_start': '1',
                                              'since': 'yesterday'}))
    claim = RunClaim(out).acquire()
    assert 'taking over the stale claim' in claim.notice and str(int(dead.stdout)) in claim.notice
    claim.release()
    (out / 'run.lock').write_text(json.dumps({'host': 'elsewhere', 'pid': 1, 'since': 'today'}))
    with pytest.raises(RunFolderError, match=r'claimed by process 1 on host elsewhere.*delete .*run\.lock'):
        RunClaim(out).acquire()
    # a live process, named by a claim that does not record when it started: never called dead (0.2.0 took over)
    (out / 'run.lock').write_text(json.dumps({'host': socket.gethostname(), 'pid': os.getpid(), 'since': 'now'}))
    with pytest.raises(RunFolderError, match=rf'is in use by process {os.getpid()}'):
        RunClaim(out).acquire()
    assert json.loads((out / 'run.lock').read_text())['since'] == 'now'


def test_a_truncated_metrics_line_is_dropped_with_a_warning_on_resume(tmp_path, capsys):
    out = tmp_path / 'run'
    train(tiny(out), progress=False)
    with open(out / 'metrics.jsonl', 'a') as f:
        f.write('{"step": 11, "train/lo')  # a kill mid-write
    s = train(tiny(out, steps=15), resume=True, progress=False)
    assert s['steps'] == 15 and 'dropped 1 broken line' in capsys.readouterr().out
    rows, broken = read_metrics(out / 'metrics.jsonl')
    assert broken == 0 and rows[-1]['step'] == 15


def _image_folder(root, shade=0):
    from PIL import Image
    for ci, cls in enumerate(('a', 'b')):
        (root / cls).mkdir(parents=True)
        for i in range(20):
            Image.fromarray(np.full((8, 8, 3), (40 * ci + 2 * i + shade) % 256, np.uint8)).save(root / cls / f'{i}.png')


def _cli(*argv, cwd=None, env=None):
    return subprocess.run([sys.executable, '-m', 'timm_lipschitz.cli', *map(str, argv)], capture_output=True,
                          text=True, cwd=cwd, env=env or child_env(), timeout=600)


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


def test_a_folder_with_someone_elses_files_is_refused_naming_them(tmp_path):
    out = tmp_path / 'p'
    out.mkdir()
    (out / 'README.md').write_text('mine\n')
    (out / 'config.json').write_text('{"mine": true}\n')
    for resume in (False, True):
        with pytest.raises(OutputError, match=r'--output-dir .* would replace README\.md, config\.json, which '
                                              r'timm-lipschitz did not write'):
            train(tiny_recipe(out), resume=resume, progress=False)
    assert (out / 'README.md').read_text() == 'mine\n' and sorted(p.name for p in out.iterdir()) == \
        ['README.md', 'config.json']


def test_a_recipe_refused_after_the_claim_leaves_no_stub(tmp_path):
    """0.2.0 left recipe.yaml behind: the corrected run was refused ('already holds an unfinished run')."""
    out = tmp_path / 'run'
    with pytest.raises(RecipeError, match='batch_size=32 must be divisible'):
        train(tiny_recipe(out, gradient_accumulation_steps=7), progress=False)
    assert not out.exists() or list(out.iterdir()) == []
    assert train(tiny_recipe(out), progress=False)['steps'] == 6


def test_a_finished_run_is_not_resumed_shorter(tmp_path):
    out = tmp_path / 'run'
    train(tiny_recipe(out), progress=False)
    with pytest.raises(RunFolderError, match='with steps=3: the run has trained 6 steps already'):
        train(tiny_recipe(out, steps=3), resume=True, progress=False)
    assert json.loads((out / 'final.json').read_text())['steps'] == 6 and yaml.safe_load(
        (out / 'recipe.yaml').read_text())['steps'] == 6


def test_a_run_resumed_with_more_steps_records_the_commands_that_reproduce_it(tmp_path):
    """--resume --set steps=20 on a 10-step cosine run: one command from the final recipe gives other weights."""
    from timm_lipschitz.cli import main
    r = tiny_recipe(tmp_path / 'run', steps=10, schedule={'name': 'cosine'},
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
    assert max_weight_diff(tmp_path / 'run', str(tmp_path / 'run') + '_reproduced') == 0.0
    assert main(['train', '--recipe', str(tmp_path / 'r.yaml'), '--set', 'steps=20', '--output-dir',
                 str(tmp_path / 'direct'), '--no-progress']) == 0
    assert max_weight_diff(tmp_path / 'run', tmp_path / 'direct') > 1e-4  # why one command is not the record


def test_a_resume_reads_its_data_from_a_new_root_only_when_it_is_the_same_data(tmp_path):
    _image_folder(tmp_path / 'a')
    shutil.copytree(tmp_path / 'a', tmp_path / 'b')
    _image_folder(tmp_path / 'c', shade=1)
    data = lambda root: {'name': 'imagefolder', 'root': str(root), 'input_size': [3, 8, 8], 'fast_path': True}  # noqa
    out = tmp_path / 'run'
    train(tiny_recipe(out, data=data(tmp_path / 'a'), batch_size=8), progress=False)
    with pytest.raises(RunFolderError, match=r"data\.root='.*c' is not the one .* started with"):
        train(tiny_recipe(out, steps=8, batch_size=8, data=data(tmp_path / 'c')), resume=True, progress=False)
    assert train(tiny_recipe(out, steps=8, batch_size=8, data=data(tmp_path / 'b')), resume=True,
                 progress=False)['steps'] == 8


def test_a_stop_signal_in_the_final_evaluation_keeps_the_exit_75_contract(tmp_path):
    (tmp_path / 'r.yaml').write_text(yaml.safe_dump(tiny_recipe(tmp_path / 'run')))
    stopped = subprocess.run([sys.executable, '-c', _TERM_IN_FINAL_EVAL, str(tmp_path / 'r.yaml')], env=child_env(),
                             capture_output=True, text=True, timeout=600)
    run = tmp_path / 'run'
    assert stopped.returncode == 75, stopped.stderr[-2000:]
    assert json.loads((run / 'stopped.json').read_text())['step'] == 6 and not (run / 'run.lock').exists()
    assert not (run / 'final.json').exists() and (run / 'state' / 'step_00000006').is_dir()
    resumed = _cli('train', '--recipe', tmp_path / 'r.yaml', '--resume', '--no-progress')
    assert resumed.returncode == 0 and json.loads((run / 'final.json').read_text())['steps'] == 6


def test_ctrl_c_prints_one_line_and_the_last_saved_state(tmp_path, signals_at_defaults):
    import time
    (tmp_path / 'r.yaml').write_text(yaml.safe_dump(tiny_recipe(tmp_path / 'run', steps=100000,
                                                         checkpoint={'every_steps': 5})))
    proc = subprocess.Popen([sys.executable, '-m', 'timm_lipschitz.cli', 'train', '--recipe', str(tmp_path / 'r.yaml'),
                             '--no-progress'], env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=signals_at_defaults)
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
        train(tiny_recipe(out), progress=False)


def test_a_folder_holding_an_unfinished_run_is_refused(tmp_path):
    """The README: a folder holding a run, finished or not, is refused without --resume (the finished case is in
    test_runs.py)."""
    from timm_lipschitz.runs import RunFolderError
    from timm_lipschitz.train import train
    out = tmp_path / 'run'
    (out / 'state' / 'step_00000002').mkdir(parents=True)
    (out / 'recipe.yaml').write_text('name: earlier\n')
    recipe = {'extends': str(ROOT / 'recipes' / 'digits_standard.yaml'), 'output_dir': str(out), 'epochs': None,
              'steps': 1}
    with pytest.raises(RunFolderError, match=r'already holds an unfinished run \(last state: step 2\)'):
        train(recipe)
    assert (out / 'recipe.yaml').read_text() == 'name: earlier\n' and not (out / 'run.lock').exists()

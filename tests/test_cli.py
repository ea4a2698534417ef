"""The command line: timm's idiom (tags, ``--model``/``--pretrained``), one-line refusals and kept tracebacks, the
flags checked once and recorded, and ``eval`` saying what produced its numbers."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch
import yaml
from timm_lipschitz.cli import main

import timm_lipschitz  # noqa: F401


ROOT = Path(__file__).resolve().parent.parent


def _class_sorted(n_per_class: int = 30, classes: int = 10):
    """A split sorted by class, like mnist_5k and every imagefolder: its first images are all of class 0."""
    labels = torch.arange(classes).repeat_interleave(n_per_class)
    images = torch.rand(len(labels), 1, 8, 8, generator=torch.Generator().manual_seed(0))
    return torch.utils.data.TensorDataset(images, labels)


def test_eval_takes_a_tag_name_and_records_what_produced_it(tmp_path, capsys):
    from timm_lipschitz.cli import main
    tag = 'mnist_convnet.cross_entropy_mnist5k'
    assert main(['eval', tag, '--sigmas', '0,0.3', '--max-images', '30', '--out', str(tmp_path), '--no-progress',
                 '--device', 'cpu']) == 0
    data = json.loads((tmp_path / 'eval.json').read_text())
    assert list(data['models']) == [tag] and data['models'][tag]['data'] == 'mnist_5k'
    env = data['environment']
    assert env['timm'] == timm.__version__ and env['torch'] == torch.__version__ and env['timm_lipschitz']
    assert 'eval' in env['command'] and env['date'][:2] == '20'
    assert main(['eval', str(tmp_path / 'no_such_folder'), '--out', str(tmp_path / 'x')]) == 2
    assert 'is neither a run or checkpoint folder, a registered tag with weights' in capsys.readouterr().err


def test_the_command_line_speaks_timms_idiom(tmp_path, capsys):
    from timm_lipschitz import __version__
    from timm_lipschitz.cli import build_parser, main
    with pytest.raises(SystemExit):
        main(['--version'])
    assert capsys.readouterr().out.strip() == f'timm-lipschitz {__version__}'
    args = build_parser().parse_args(['eval', '-m', 'a', '-b', '64', '--dataset', 'digits', '--data-dir', 'd',
                                      '--input-size', '1', '16', '16'])
    assert (args.model, args.batch_size, args.data, args.data_root, args.input_size) == \
        ('a', 64, 'digits', 'd', ['1', '16', '16'])
    assert '(default: 256)' in build_parser()._subparsers._group_actions[0].choices['eval'].format_help()
    tag = 'mnist_convnet.cross_entropy_mnist5k'
    for size in (['--input-size', '1,28,28'], ['--input-size', '1', '28', '28'], ['--img-size', '28']):
        assert main(['eval', '-m', tag, '--pretrained', *size, '--sigmas', '0', '--max-images', '20', '--out',
                     str(tmp_path / size[0]), '--no-progress', '--device', 'cpu']) == 0
        entry = json.loads((tmp_path / size[0] / 'eval.json').read_text())['models'][tag]
        assert entry['overrides']['input_size'] == [1, 28, 28]
    assert main(['eval', '-m', tag, '--pretrained', '--img-size', '28', '--input-size', '1,28,28', '--out',
                 str(tmp_path / 'x')]) == 2
    assert '--input-size and --img-size name the same thing' in capsys.readouterr().err


def test_accelerate_launch_with_several_processes_on_a_cpu_is_pointed_to_torchrun():
    from types import SimpleNamespace

    import timm_lipschitz.train.build as build
    from timm_lipschitz.train.build import requested_processes
    assert requested_processes(['/x/bin/python', '/x/bin/accelerate', 'launch', '--num_processes', '2', '-m', 'a']) == 2
    assert requested_processes(['accelerate', 'launch', '--num_processes=4', 'train.py']) == 4
    assert requested_processes(['/x/bin/accelerate', 'launch', '-m', 'timm_lipschitz.train']) is None
    assert requested_processes(['torchrun', '--nproc_per_node', '2']) is None
    one = SimpleNamespace(num_processes=1)
    build_cmdline = ['/x/bin/python', '/x/bin/accelerate', 'launch', '--num_processes', '2', '-m', 'x']
    orig = build.Path

    class FakeProc:
        def __init__(self, path):
            self.path = str(path)

        def read_bytes(self):
            return '\0'.join(build_cmdline).encode()
    try:
        build.Path = lambda p: FakeProc(p) if str(p).startswith('/proc/') else orig(p)
        message = build.warn_single_process_launch(one)
    finally:
        build.Path = orig
    assert message and 'starts one' in message and 'torchrun --nproc_per_node 2' in message


def test_every_refusal_is_a_user_error():
    from timm_lipschitz.data import DataError
    from timm_lipschitz.errors import UserError
    from timm_lipschitz.hub import CheckpointError, TagError
    from timm_lipschitz.losses import HyperparameterError
    from timm_lipschitz.recipes import RecipeError
    from timm_lipschitz.robustness.attacks import AttackError
    from timm_lipschitz.runs import RunFolderError, StateSaveError
    from timm_lipschitz.sweep import GridError
    from timm_lipschitz.train import EXIT_PREEMPTED, Preempted, TrainingDiverged
    for cls in (DataError, CheckpointError, TagError, HyperparameterError, RecipeError, AttackError, RunFolderError,
                StateSaveError, GridError, Preempted, TrainingDiverged):
        assert issubclass(cls, UserError), cls
    assert Preempted.exit_code == EXIT_PREEMPTED == 75


def test_a_bug_keeps_its_traceback_and_a_refusal_is_one_line(monkeypatch, capsys):
    from timm_lipschitz import cli
    from timm_lipschitz.errors import EXIT_INTERNAL_ERROR, EXIT_USER_ERROR, UsageError

    def failing(exc):
        def run(args):
            raise exc
        return run
    for exc, code in ((RuntimeError('an internal torch error'), EXIT_INTERNAL_ERROR),
                      (UsageError('--x 3 is not allowed'), EXIT_USER_ERROR)):
        monkeypatch.setitem(cli.COMMANDS, 'convert', (*cli.COMMANDS['convert'][:2], failing(exc)))
        assert cli.main(['convert', 'a.pt', 'out']) == code
        err = capsys.readouterr().err
        assert ('Traceback' in err) == (code == EXIT_INTERNAL_ERROR)
        assert str(exc) in err
    assert EXIT_INTERNAL_ERROR not in (0, EXIT_USER_ERROR, 75)


def test_a_resolved_recipe_is_not_resolved_again(monkeypatch):
    """The command line resolves once (answering mistakes before torch loads) and hands the result on."""
    import timm_lipschitz.recipes as recipes
    import timm_lipschitz.train as train_pkg
    from timm_lipschitz import cli
    calls = []
    real = recipes.resolve_recipe

    def counting(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)
    monkeypatch.setattr(recipes, 'resolve_recipe', counting)
    monkeypatch.setattr(train_pkg, 'resolve_recipe', counting)
    code = cli.main(['train', '--recipe', str(ROOT / 'recipes' / 'digits_standard.yaml'),
                     '--set', 'model.name=no_such_model'])
    assert code == 2 and len(calls) == 1


def test_the_eval_command_records_overrides(tmp_path, capsys):
    from timm_lipschitz.cli import main
    from timm_lipschitz.evaluate import read_eval
    with pytest.warns(UserWarning, match='depart from the statistics'):
        assert main(['eval', '--model', 'mnist_convnet.cross_entropy_mnist5k', '--pretrained', '--mean', '0.5',
                     '--std', '0.5', '--sigmas', '0', '--max-images', '50', '--out', str(tmp_path), '--no-progress',
                     '--device', 'cpu']) == 0
    entry = read_eval(tmp_path / 'eval.json')['mnist_convnet.cross_entropy_mnist5k']
    assert entry['overrides'] == {'mean': [0.5], 'std': [0.5]}
    assert 'evaluated with overrides of its own configuration: mean [0.5], std [0.5]' in \
        (tmp_path / 'eval.md').read_text()


@pytest.mark.parametrize('flags,message', [
    (['--certify', '--n', '0'], '--n=0 is not allowed'),
    (['--certify', '--n0', '0'], '--n0=0 is not allowed'),
    (['--certify', '--alpha', '1.5'], r'--alpha=1.5 is not allowed; the failure probability must be in \(0, 1\)'),
    (['--certify', '--alpha', '0'], '--alpha=0.0 is not allowed'),
    (['--certify', '--certify-images', '0'], '--certify-images=0 is not allowed'),
    (['--certify', '--certify-sigma', '0'], '--certify-sigma=0.0 is not allowed'),
    (['--corruptions', 'noise', '--severities', '0'], r"--severities '0': \[0\] are not allowed; give severities "
                                                       r"from 1 to 5"),
    (['--sigmas', 'inf'], r'sigma values \[inf\] are not allowed; every sigma must be a number in \[0, 10\]'),
    (['--attack', 'l2', '--eps', 'linf=0.1'], '--eps gives linf values, but --attack l2 does not run that norm'),
    (['--attack', 'l2', '--attack-method', 'autoattack', '--autoattack-square-restarts', '0'],
     '--autoattack-square-restarts=0 is not allowed; give an integer >= 1'),
    (['--attack', 'l2', '--attack-method', 'pgd', '--autoattack-square-restarts', '1'],
     '--autoattack-square-restarts=1 applies to the autoattack method only'),
])
def test_out_of_range_values_are_refused_naming_the_flag(flags, message, tmp_path, capsys):
    from timm_lipschitz.cli import main
    assert main(['eval', '--model', 'mnist_convnet.cross_entropy_mnist5k', '--pretrained', '--out', str(tmp_path),
                 *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith('error: ') and 'Traceback' not in err
    import re
    assert re.search(message, err), err
    assert not (tmp_path / 'eval.json').exists()


def test_no_progress_silences_the_certificates_and_the_attacks(capfd):
    from timm_lipschitz.robustness.certify import certify_dataset
    model = timm.create_model('mnist_convnet', num_classes=10, img_size=8, in_chans=1).eval()
    certify_dataset(model, _class_sorted(2), 10, n0=2, n=4, num_images=3, progress=False)
    assert 'certify' not in capfd.readouterr().err
    certify_dataset(model, _class_sorted(2), 10, n0=2, n=4, num_images=3, progress=True)
    assert 'certify' in capfd.readouterr().err
    pytest.importorskip('art')
    from timm_lipschitz.robustness.attacks import PixelModel, _attack, _estimator
    est = _estimator(PixelModel(model), (1, 8, 8), 10, torch.device('cpu'))
    quiet = _attack('autoattack', est, 'l2', 0.5, 2, 8, progress=False)
    assert quiet.attacks and not any(getattr(a, 'verbose', False) for a in quiet.attacks)


# ---- every command keeps the promises train keeps ------------------------------------------------------------------
def _snapshot(folder: Path) -> dict:
    """Every file under ``folder`` with its sha256: what a refusal must leave exactly as it was."""
    import hashlib
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob('*')) if p.is_file()}


@pytest.fixture(scope='module')
def finished_run(tmp_path_factory):
    from timm_lipschitz.train import train
    out = tmp_path_factory.mktemp('finished') / 'run'
    train({'name': 'tiny', 'model': {'name': 'mnist_convnet', 'kwargs': {'hidden_dim': 16}},
           'data': {'name': 'digits', 'input_size': [1, 8, 8], 'fast_path': True}, 'loss': {'name': 'cross_entropy'},
           'optimizer': {'name': 'sgd', 'lr': 0.05}, 'steps': 2, 'batch_size': 32, 'log_with': [],
           'eval': {'sigmas': [0.0, 0.3], 'every_epochs': 0}, 'output_dir': str(out)}, progress=False)
    return out


def _user_folder(tmp_path: Path, *names: str) -> Path:
    folder = tmp_path / 'mine'
    folder.mkdir()
    for name in names:
        (folder / name).write_text(f'my own {name}\n')
    return folder


def _grid_into(tmp_path: Path, output_dir: Path) -> Path:
    grid = tmp_path / 'grid.yaml'
    grid.write_text(yaml.safe_dump({'name': 'g', 'base': str(ROOT / 'recipes' / 'digits_lipschitz.yaml'),
                                    'output_dir': str(output_dir), 'axes': {'loss.sigma': [0.25]}}))
    return grid


# (argv builder, the files the user folder holds, the message): each was replaced or accepted by 0.2.0
REFUSED_OUTPUTS = {
    'slurm over the grid file': (lambda t, run, mine: ['sweep', str(_grid_into(t, t / 'sw')), '--emit-commands',
                                                        '--slurm', str(t / 'grid.yaml')], (),
                                 'is not a script timm-lipschitz wrote'),
    'slurm over a file of yours': (lambda t, run, mine: ['sweep', str(_grid_into(t, t / 'sw')), '--emit-commands',
                                                          '--slurm', str(mine / 'job.sh')], ('job.sh',),
                                   'is not a script timm-lipschitz wrote'),
    'publish into your folder': (lambda t, run, mine: ['publish', str(run), '--repo-id', 'org/x', '--dry-run',
                                                        '--out-dir', str(mine)], ('README.md', 'notes.txt'),
                                 'would replace README.md'),
    'publish beside your file': (lambda t, run, mine: ['publish', str(run), '--repo-id', 'org/x', '--dry-run',
                                                        '--out-dir', str(mine)], ('notes.txt',),
                                 'which would be uploaded with it'),
    'export over your weights': (lambda t, run, mine: ['export', '--robustbench', str(run), '--name', 'Mine2026',
                                                        '--threat', 'L2', '--out', str(mine)],
                                 ('model.safetensors',), 'would replace model.safetensors'),
    'convert into your folder': (lambda t, run, mine: ['convert', str(run / 'model.safetensors'), str(mine)],
                                 ('README.md',), 'would replace README.md'),
    'collect into your folder': (lambda t, run, mine: ['sweep', str(_grid_into(t, mine)), '--collect'],
                                 ('tables.md', 'results.json'), 'would replace'),
    'eval into your folder': (lambda t, run, mine: ['eval', str(run), '--sigmas', '0', '--out', str(mine)],
                              ('eval.md', 'eval.json'), 'would replace eval.json, eval.md'),
}


@pytest.mark.parametrize('case', sorted(REFUSED_OUTPUTS))
def test_no_command_replaces_a_users_file(case, finished_run, tmp_path, capsys):
    argv, files, message = REFUSED_OUTPUTS[case]
    mine = _user_folder(tmp_path, *files)
    argv = argv(tmp_path, finished_run, mine)
    before, grid_before = _snapshot(tmp_path), _snapshot(finished_run)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert _snapshot(tmp_path) == before and _snapshot(finished_run) == grid_before


def test_a_folder_a_command_wrote_is_written_again(finished_run, tmp_path, capsys):
    """The rule refuses a user's files only: an evaluation's own folder (its manifest, or an older eval.json with
    its recorded environment) and a publish folder are written again."""
    out = tmp_path / 'ev'
    assert main(['eval', str(finished_run), '--sigmas', '0', '--out', str(out), '--no-progress']) == 0
    assert main(['eval', str(finished_run), '--sigmas', '0', '--out', str(out), '--no-progress']) == 0
    (out / '.timm-lipschitz.json').unlink()  # a folder from before the manifest: eval.json proves it is ours
    assert main(['eval', str(finished_run), '--sigmas', '0', '--out', str(out), '--no-progress']) == 0
    pub = tmp_path / 'pub'
    for _ in range(2):
        assert main(['publish', str(finished_run), '--repo-id', 'org/x', '--dry-run', '--out-dir', str(pub)]) == 0


REFUSED_FLAGS = [
    (['eval', 'TAG', '--sigmas', '0:inf:0.1'], "sigmas='0:inf:0.1' is not allowed"),
    (['eval', 'TAG', '--sigmas', '1e300'], 'every sigma must be a number in [0, 10]'),
    (['eval', 'TAG', '-b', '0'], '--batch-size=0 is not allowed; give an integer >= 1'),
    (['eval', 'TAG', '--max-images', '-3'], '--max-images=-3 is not allowed'),
    (['eval', 'TAG', '--img-size', '0'], '--img-size=0 is not allowed'),
    (['eval', 'TAG', '--alpha', '0.01'], '--alpha set randomized smoothing, which runs with --certify'),
    (['eval', 'TAG', '--certify-sigma', '0.5'], '--certify-sigma set randomized smoothing'),
    (['eval', 'TAG', '--certify-preset', 'cohen'], '--certify-preset set randomized smoothing'),
    (['eval', 'TAG', '--severities', '1'], '--severities sets the corruptions, which run with --corruptions'),
    (['eval', 'TAG', '--eps', 'l2=0.5'], '--eps set the attacks, which run with --attack'),
    (['train', '--recipe', 'RECIPE', '--stop-at-step', '-1'], '--stop-at-step=-1 is not allowed'),
    (['sweep', 'GRID', '--jobs', '0'], '--jobs=0 is not allowed'),
    (['sweep', 'GRID', '--time', '01:00:00'], '--time shapes only the SLURM script'),
    (['sweep', 'GRID', '--emit-commands', '--slurm', 'OUT', '--time', 'abc'], "--time 'abc' is not allowed"),
    (['sweep', 'GRID', '--emit-commands', '--slurm', 'OUT', '--cpus-per-task', '0'], '--cpus-per-task=0'),
    (['sweep', 'GRID', '--emit-commands', '--slurm', 'OUT', '--signal-lead', '-5'], '--signal-lead=-5'),
    (['sweep', 'GRID', '--emit-commands', '--slurm', 'OUT', '--mem', 'x; rm -rf /'], "--mem 'x; rm -rf /'"),
    (['sweep', 'GRID', '--emit-commands', '--slurm', 'OUT', '--partition', 'a\nb'], "--partition 'a\\nb'"),
]


@pytest.mark.parametrize('argv,message', REFUSED_FLAGS, ids=lambda v: ' '.join(v) if isinstance(v, list) else '')
def test_every_number_and_mode_of_a_flag_is_checked_before_anything_is_written(argv, message, tmp_path, capsys):
    subst = {'TAG': 'mnist_convnet.cross_entropy_mnist5k', 'RECIPE': str(ROOT / 'recipes' / 'digits_lipschitz.yaml'),
             'GRID': str(_grid_into(tmp_path, tmp_path / 'sweep')), 'OUT': str(tmp_path / 'jobs.sh')}
    before = _snapshot(tmp_path)
    assert main([subst.get(a, a) for a in argv] + (['--out', str(tmp_path / 'ev')] if argv[0] == 'eval' else [])) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert _snapshot(tmp_path) == before


def test_an_explicit_data_root_is_used_or_refused_and_eval_json_records_what_was_read(tmp_path, capsys):
    """0.2.0 evaluated --data fashion_mnist --data-root /nonexistent from the Debian package's copy, and said not."""
    from timm_lipschitz.data import DEBIAN_FASHION_MNIST
    tag = 'mnist_convnet.cross_entropy_fmnist'
    if not DEBIAN_FASHION_MNIST.is_dir():
        pytest.skip('the Debian package dataset-fashion-mnist is not installed')
    assert main(['eval', tag, '--data-root', str(tmp_path / 'nonexistent'), '--sigmas', '0', '--max-images', '20',
                 '--out', str(tmp_path / 'a')]) == 2
    assert f'looked in: {tmp_path / "nonexistent"}' in capsys.readouterr().err
    assert not (tmp_path / 'a').exists()
    assert main(['eval', tag, '--sigmas', '0', '--max-images', '20', '--out', str(tmp_path / 'b'),
                 '--no-progress']) == 0
    assert main(['eval', tag, '--sigmas', '0', '--max-images', '20', '--out', str(tmp_path / 'c'), '--no-progress',
                 '--data-root', str(DEBIAN_FASHION_MNIST)]) == 0
    b, c = (json.loads((tmp_path / d / 'eval.json').read_text())['models'][tag]['data_files'] for d in 'bc')
    assert b['root'] is None and c['root'] == str(DEBIAN_FASHION_MNIST)
    assert b['source'] == c['source'] == f'idx files in {DEBIAN_FASHION_MNIST}'
    assert b['fingerprint'] == c['fingerprint'] and len(b['fingerprint']) == 16  # the same images, read twice

"""The command line: timm's idiom (tags, ``--model``/``--pretrained``), one-line refusals and kept tracebacks, the
flags checked once and recorded, and ``eval`` saying what produced its numbers."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch

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
    (['--sigmas', 'inf'], r'sigma values \[inf\] are not allowed; every sigma must be a finite number'),
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

"""First use as a timm user expects it (issue 32, the parts done so far): ``eval`` takes tag names, ``eval.json``
says what produced it, certificates beyond smoothing's reach are null, and every model with
``forward_intermediates`` can prune the layers after an intermediate."""
from __future__ import annotations

import json

import pytest
import timm
import torch

import timm_lipschitz  # noqa: F401


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
    assert 'is neither a run or checkpoint folder nor a registered tag' in capsys.readouterr().err


def test_certified_accuracy_beyond_smoothings_reach_is_null():
    """n 50 at alpha 0.001 certifies at most 0.25 * Phi^-1(0.001 ** (1/50)) = 0.283: radii 0.5 .. 1.0 are out of
    reach, null rather than a measured-looking 0."""
    from timm_lipschitz.fileio import dumps
    from timm_lipschitz.robustness.certify import certify_dataset
    model = timm.create_model('mnist_convnet', num_classes=10, img_size=8, in_chans=1).eval()
    data = torch.utils.data.TensorDataset(torch.rand(6, 1, 8, 8), torch.arange(6) % 3)
    r = certify_dataset(model, data, 10, n0=5, n=50, num_images=6, progress=False)
    assert r['radii'] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert r['certified_accuracy'][2:] == [None, None, None] and r['certified_accuracy'][0] is not None
    assert 'null' in dumps(r['certified_accuracy'])


@pytest.mark.parametrize('name', ['cifar_resnet20', 'cifar_preresnet20', 'mnist_convnet'])
def test_prune_intermediate_layers_keeps_the_intermediates(name):
    kwargs = {'in_chans': 1, 'img_size': 28} if name == 'mnist_convnet' else {}
    model = timm.create_model(name, num_classes=10, **kwargs).eval()
    x = torch.rand(2, 1, 28, 28) if name == 'mnist_convnet' else torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        full = model.forward_intermediates(x, indices=[1], intermediates_only=True)
    kept = model.prune_intermediate_layers(indices=[1])
    with torch.no_grad():
        pruned = model.forward_intermediates(x, indices=[1], intermediates_only=True)
    assert kept == [1] and len(full) == len(pruned) == 1 and torch.allclose(full[0], pruned[0])
    assert sum(p.numel() for p in model.parameters()) < sum(
        p.numel() for p in timm.create_model(name, num_classes=10, **kwargs).parameters())


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


def test_hub_list_shows_every_tag_with_its_scores_without_loading_torch():
    import subprocess
    import sys
    from pathlib import Path

    from timm_lipschitz.hub import load_robustness
    from timm_lipschitz.listing import tag_rows
    from timm_lipschitz.zoo import shipped
    rows = tag_rows()
    assert [r['name'] for r in rows] == sorted(shipped())
    for r in rows:
        scores = load_robustness(r['name'])
        assert r['dataset'] == scores['dataset'] and r['objective'] == scores['objective']
        assert r['acc@0.3'] == scores['acc@0.3'] and r['acc@0'] == scores['acc@0']
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, '-c', "import sys; from timm_lipschitz.cli import main; main(['hub', "
                          "'list']); print('torch loaded:', 'torch' in sys.modules)"], capture_output=True,
                         text=True, env={'PATH': '/usr/bin:/bin', 'PYTHONPATH': str(root)}, timeout=120)
    lines = out.stdout.splitlines()
    assert lines[0].startswith('| tag | dataset | objective | clean | sigma 0.3 | sigma 0.5 | grid mean')
    assert len(lines) == 2 + len(rows) + 1 and lines[-1] == 'torch loaded: False'
    digits = next(line for line in lines if line.startswith('| cifar_resnet20.lipschitz_hinge_s050_b1_l001_digits '))
    assert '| 98.33 | 94.44 | 75.00 | 92.11 |' in digits


def _finished(tmp_path):
    from timm_lipschitz.train import train
    recipe = {'name': 'pub', 'model': {'name': 'mnist_convnet'}, 'loss': {'name': 'cross_entropy'},
              'data': {'name': 'digits', 'input_size': [1, 8, 8], 'fast_path': True}, 'steps': 2, 'batch_size': 32,
              'log_with': [], 'eval': {'sigmas': [0.0], 'every_epochs': 0}, 'output_dir': str(tmp_path / 'run'),
              'optimizer': {'name': 'sgd', 'lr': 0.01}}
    return train(recipe, progress=False)['output_dir']


def test_publish_fails_in_one_line_without_a_token_a_valid_repo_id_or_the_network(tmp_path, monkeypatch, capsys):
    import os
    import subprocess
    import sys
    from pathlib import Path

    from timm_lipschitz.cli import main
    run = _finished(tmp_path)
    monkeypatch.delenv('HF_TOKEN', raising=False)
    monkeypatch.setenv('HF_HOME', str(tmp_path / 'hf-home'))  # no stored token either
    assert main(['publish', run, '--repo-id', 'org/name']) == 2
    assert 'no Hugging Face token' in capsys.readouterr().err and not (Path(run) / 'publish').exists()
    assert main(['publish', run, '--repo-id', 'not a repo']) == 2
    assert "--repo-id 'not a repo' is not ORG/NAME" in capsys.readouterr().err
    root = Path(__file__).resolve().parent.parent
    env = dict(os.environ, PYTHONPATH=str(root), HF_TOKEN='hf_fake', HF_HOME=str(tmp_path / 'hf-home'),
               HF_ENDPOINT='http://127.0.0.1:9', HF_HUB_ETAG_TIMEOUT='2', HF_HUB_DOWNLOAD_TIMEOUT='2')
    r = subprocess.run([sys.executable, '-m', 'timm_lipschitz.cli', 'publish', run, '--repo-id', 'org/name'],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 2 and 'Traceback' not in r.stderr, r.stderr[-2000:]
    assert r.stderr.startswith('error: could not upload to org/name: ') and 'The folder is built in' in r.stderr
    assert (Path(run) / 'publish' / 'model.safetensors').is_file()


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


def test_the_cohen_preset_sets_their_settings_and_writes_their_per_image_file(tmp_path):
    from timm_lipschitz.cli import build_parser, main
    from timm_lipschitz.evaluate import certify_request
    args = build_parser().parse_args(['eval', '--certify', '--certify-preset', 'cohen'])
    assert {k: certify_request(args)[k] for k in ('n0', 'n', 'alpha')} == {'n0': 100, 'n': 100_000, 'alpha': 0.001}
    args = build_parser().parse_args(['eval', '--certify'])
    assert {k: certify_request(args)[k] for k in ('n0', 'n', 'alpha')} == {'n0': 100, 'n': 1000, 'alpha': 0.001}
    tag = 'mnist_convnet.cross_entropy_mnist5k'
    assert main(['eval', '-m', tag, '--pretrained', '--certify', '--certify-preset', 'cohen', '--n', '200',
                 '--certify-images', '6', '--sigmas', '0', '--max-images', '20', '--out', str(tmp_path),
                 '--no-progress', '--device', 'cpu']) == 0
    smooth = json.loads((tmp_path / 'eval.json').read_text())['models'][tag]['smoothing']
    assert smooth['preset'] == 'cohen' and smooth['n'] == 200 and smooth['departs_from_preset'] == {'n': 200}
    lines = (tmp_path / f'certify_{tag}.tsv').read_text().splitlines()
    assert lines[0] == 'idx\tlabel\tpredict\tradius\tcorrect\ttime' and len(lines) == 7
    for line, row in zip(lines[1:], smooth['rows']):
        idx, label, predict, radius, correct, spent = line.split('\t')
        assert (int(idx), int(label), int(predict), int(correct)) == \
            (row['index'], row['label'], row['predicted'], int(row['correct']))
        assert float(radius) == pytest.approx(row['radius'], abs=5e-3) and spent.startswith('0:00:')
    assert 'the cohen protocol except n 200' in (tmp_path / 'eval.md').read_text()

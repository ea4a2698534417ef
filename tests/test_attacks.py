"""Adversarial robustness with ART: closed forms on a linear model, the ball and the box, gradient-masking checks, bad
requests, and the eval command's outputs read back."""
import builtins
import json

import numpy as np
import pytest
import timm
import torch
import torch.nn as nn
from helpers import TinyNet
from scipy.stats import norm as gaussian
from timm_lipschitz.robustness.attacks import (AttackError, PixelModel, attack_sweep, eps_key, masking_warnings,
                                               parse_eps)

import timm_lipschitz  # noqa: F401

pytest.importorskip('art', reason='the attacks extra is not installed (pip install "timm-lipschitz[attacks]")')


class Linear2(nn.Module):
    """Two classes split by w.x = b: logits (s, -s) with s = w.x - b; pixels used as they are (mean 0, std 1)."""

    def __init__(self, w, b):
        super().__init__()
        self.w, self.b = nn.Parameter(w.clone()), b
        self.num_classes = 2
        self.pretrained_cfg = {'mean': (0.0,), 'std': (1.0,)}

    def forward(self, x):
        s = x.flatten(1) @ self.w - self.b
        return torch.stack([s, -s], 1)


class Constant(nn.Module):
    def __init__(self):
        super().__init__()
        self.p = nn.Parameter(torch.zeros(1))
        self.num_classes = 3
        self.pretrained_cfg = {'mean': (0.0,), 'std': (1.0,)}

    def forward(self, x):
        out = torch.zeros(x.shape[0], 3) + 0 * self.p + 0 * x.flatten(1).sum(1, keepdim=True)  # a zero gradient
        out[:, 2] = 1.0
        return out


class ThirdClass(nn.Module):
    """A two-class model with a third logit far below the others: the same decision boundary, three classes."""

    def __init__(self, model):
        super().__init__()
        self.model, self.num_classes, self.pretrained_cfg = model, 3, model.pretrained_cfg

    def forward(self, x):
        z = self.model(x)
        return torch.cat([z, z.sum(1, keepdim=True) * 0 - 100], 1)


def _linear_problem(n=60, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d, generator=g)
    side = int(d ** 0.5)
    x = 0.4 + 0.2 * torch.rand(n, 1, side, side, generator=g)  # inside [0.4, 0.6]: the box never binds
    b = float((x.flatten(1) @ w).median())
    s = x.flatten(1) @ w - b
    y = (s < 0).long()                                        # class 0 iff s > 0: every point correct
    return Linear2(w, b), x, y, s.abs(), w


@pytest.mark.parametrize('norm', ['l2', 'linf'])
def test_pgd_on_a_linear_model_matches_the_distance_to_the_boundary(norm):
    model, x, y, margin, w = _linear_problem()
    dual = w.norm(p=2) if norm == 'l2' else w.abs().sum()     # distance to the boundary = |s| / ||w||_dual
    distance = margin / dual
    # L2 PGD from a random start keeps part of the start's component across w after projecting, so it reaches
    # about 0.98 eps along w: each eps lies in a gap of the distances wider than 5% (L-inf's sign steps are exact)
    d = distance.sort().values
    gaps = [(float(d[i + 1] / d[i]), i) for i in range(len(d) - 1)]
    picks = [max(g for g in gaps if lo <= g[1] < hi) for lo, hi in ((5, 20), (20, 40), (40, 55))]
    assert all(ratio > 1.05 for ratio, _ in picks), picks
    eps = [float((d[i] * d[i + 1]).sqrt()) for _, i in picks]
    r = attack_sweep(model, (x, y), norms=[norm], eps={norm: eps}, steps=40, max_images=60)
    for e in eps:
        expected = 100.0 * float((distance > e).float().mean())
        assert r[norm][eps_key(e)] == pytest.approx(expected, abs=1e-4), (e, r[norm])


def test_adversarial_images_stay_in_the_box_and_the_ball():
    from timm_lipschitz.robustness.attacks import _check_ball, _estimator, _robust
    torch.manual_seed(0)
    model = timm.create_model('mnist_convnet', img_size=8, pretrained_cfg_overlay=dict(input_size=(1, 8, 8))).eval()
    x = torch.rand(16, 1, 8, 8).numpy()
    y = np.arange(16) % 10
    est = _estimator(PixelModel(model).eval(), x.shape[1:], 10, torch.device('cpu'))
    for norm, eps in (('linf', 0.2), ('l2', 1.5)):
        _, adv, _, _ = _robust('pgd', est, x, y, norm, eps, 10, 16, 0)
        delta = (adv - x).reshape(16, -1)
        size = np.abs(delta).max(1) if norm == 'linf' else np.linalg.norm(delta, axis=1)
        assert adv.min() >= 0 and adv.max() <= 1 and (size <= eps * (1 + 1e-5)).all()
        _check_ball(adv, x, norm, eps)
        with pytest.raises(AttackError, match='left \\[0, 1\\] or the ball'):
            _check_ball(adv + 0.01 + eps, x, norm, eps)


def test_a_model_that_ignores_its_input_keeps_its_accuracy():
    x, y = torch.rand(30, 1, 4, 4), torch.tensor([2] * 20 + [0] * 10)
    r = attack_sweep(Constant(), (x, y), norms=['linf', 'l2'], eps={'*': [0.1, 1.0]}, max_images=30, steps=5)
    assert r['clean'] == pytest.approx(200 / 3)
    assert all(v == pytest.approx(200 / 3) for n in ('linf', 'l2') for v in r[n].values())
    assert any('survive eps' in w for w in r['warnings'])  # the large-epsilon check flags it, as it should


def test_robust_accuracy_falls_with_epsilon_on_a_trained_model():
    from timm_lipschitz.data import create_dataset
    model = timm.create_model('mnist_convnet.lipschitz_hinge_s075_b10_l0005_mnist5k', pretrained=True).eval()
    ds, _ = create_dataset('mnist_5k', 'test', input_size=(1, 28, 28))
    r = attack_sweep(model, ds, norms=['linf'], max_images=60, steps=10, black_box=True)
    accs = list(r['linf'].values())
    assert list(r['linf']) == ['0.1', '0.2', '0.3'] and accs == sorted(accs, reverse=True)
    assert accs[0] <= r['clean'] and r['sanity']['linf']['0.5'] <= 10
    assert set(r['square']['linf']) == set(r['linf']) and r['reported'] == {'pgd_linf@0.3': accs[-1]}
    assert not [w for w in r['warnings'] if 'rises' in w or 'survive' in w]


def test_masking_warnings_name_what_they_saw():
    r = {'attack': 'pgd', 'linf': {'0.1': 50.0, '0.2': 60.0}, 'sanity': {'linf': {'0.5': 40.0}},
         'square': {'linf': {'0.1': 20.0, '0.2': 59.0}}}
    w = masking_warnings(r)
    assert any('rises from 50.0 at eps 0.1 to 60.0 at eps 0.2' in x for x in w)
    assert any('40.0% survive eps 0.5' in x for x in w)
    assert any('Square attack (20.0%) beats pgd (50.0%) at eps 0.1' in x for x in w) and len(w) == 3


@pytest.mark.parametrize('call,message', [
    (lambda: attack_sweep(Constant(), (torch.rand(2, 1, 4, 4), torch.zeros(2).long()), norms=['l3']),
     r"norms \['l3'\] are not allowed; choose from \('linf', 'l2'\)"),
    (lambda: attack_sweep(Constant(), (torch.rand(2, 1, 4, 4), torch.zeros(2).long()), method='fgsm'),
     "attack method 'fgsm' is not allowed"),
    (lambda: parse_eps('linf=abc'), "give numbers or fractions"),
    (lambda: parse_eps('linf=-0.1'), 'every epsilon must be > 0'),
    (lambda: parse_eps('l1=0.1'), "norm 'l1' is not allowed"),
])
def test_bad_attack_requests_get_clear_errors(call, message):
    with pytest.raises(AttackError, match=message):
        call()


def test_autoattack_names_its_members_and_who_broke_each_image():
    """On a linear model every image nearer the boundary than eps is broken (by a gradient member: the margin is
    exact), the rest keep their label; the counts per member add up to the broken images, and the Square budget in
    the method string is the one that ran."""
    linear, x, y, dist, w = _linear_problem(n=12, d=64, seed=1)  # Square needs more than 4x4 pixels
    dist = dist / w.norm()
    model = ThirdClass(linear)  # APGD-DLR needs three classes; the third never wins
    eps = float(dist.median())
    r = attack_sweep(model, (x, y), norms=['l2'], eps={'l2': [eps]}, method='autoattack', max_images=12, steps=5,
                     square_restarts=1, progress=False)
    key = eps_key(eps)
    assert r['l2'][key] == pytest.approx(100 * float((dist > eps * (1 + 1e-4)).float().mean()))
    counts = r['broken_by']['l2'][key]
    assert list(counts) == ['APGD-CE', 'APGD-DLR', 'DeepFool', 'Square']
    assert sum(counts.values()) == round((r['clean'] - r['l2'][key]) * 12 / 100) > 0
    assert 'Square 5,000 queries × 1 restart(s)' in r['method'] and 'APGD-CE 100 steps × 5 start(s)' in r['method']


@pytest.mark.parametrize('kwargs,message', [
    (dict(method='autoattack', square_restarts=0), 'square_restarts=0 is not allowed; give an integer >= 1'),
    (dict(method='pgd', square_restarts=1), 'applies to the autoattack method only'),
])
def test_bad_square_restarts_get_clear_errors(kwargs, message):
    with pytest.raises(AttackError, match=message):
        attack_sweep(Constant(), (torch.rand(2, 1, 4, 4), torch.zeros(2).long()), **kwargs)


def test_parse_eps_reads_fractions():
    assert parse_eps('linf=8/255,1/255') == {'linf': [1 / 255, 8 / 255]} and parse_eps('0.5') == {'*': [0.5]}


def test_missing_library_says_how_to_install(monkeypatch, tmp_path, capsys):
    from timm_lipschitz.cli import main
    real = builtins.__import__

    def no_art(name, *args, **kwargs):
        if name == 'art' or name.startswith('art.'):
            raise ImportError('No module named art')
        return real(name, *args, **kwargs)
    monkeypatch.setattr(builtins, '__import__', no_art)
    assert main(['eval', '--model', 'mnist_convnet.cross_entropy_mnist5k', '--pretrained', '--attack', 'l2',
                 '--out', str(tmp_path)]) == 2
    assert 'pip install "timm-lipschitz[attacks]"' in capsys.readouterr().err


def test_eval_attack_on_a_run_folder_reports_everywhere(tmp_path, drawn, capsys):
    from timm_lipschitz.cli import main
    from timm_lipschitz.evaluate import read_eval
    from timm_lipschitz.hub import load_robustness
    from timm_lipschitz.train import train
    s = train({'name': 'a', 'model': {'name': 'mnist_convnet'}, 'loss': {'name': 'cross_entropy'}, 'steps': 20,
               'batch_size': 32, 'data': {'name': 'digits', 'input_size': [1, 8, 8], 'fast_path': True},
               'log_with': [], 'eval': {'sigmas': [0.0, 0.3], 'every_epochs': 0}, 'output_dir': str(tmp_path / 'run'),
               'optimizer': {'name': 'sgd', 'lr': 0.1}}, progress=False)
    assert main(['eval', s['output_dir'], '--attack', 'l2,linf', '--eps', 'l2=0.5,1', '--eps', 'linf=1/10',
                 '--attack-images', '20', '--attack-steps', '5', '--certify-images', '5', '--n', '50', '--n0', '10',
                 '--sigmas', '0', '--out', str(tmp_path / 'ev'), '--device', 'cpu', '--no-progress',
                 '--record']) == 0  # not the full protocol (own epsilons, 20 images, 5 steps): recorded on request
    a = read_eval(tmp_path / 'ev' / 'eval.json')['a']['attacks']
    assert a['attack'] == 'pgd' and set(a['l2']) == {'0.5', '1'} and set(a['linf']) == {'0.1'}
    assert a['num_images'] == 20 and set(a['smoothing']['l2']) == {'0.5', '1'}
    # n 50 at alpha 0.001 certifies at most 0.25 * Phi^-1(0.001 ** (1/50)) = 0.283: both radii are out of reach
    assert a['smoothing']['max_radius'] == pytest.approx(0.25 * gaussian.ppf(0.001 ** (1 / 50)), rel=1e-9)
    assert a['smoothing']['l2'] == {'0.5': None, '1': None}
    lines = drawn['attacks_l2.png']['lines']['a (pgd)']
    assert lines == ([0.0, 0.5, 1.0], [a['clean'], a['l2']['0.5'], a['l2']['1']])
    md = (tmp_path / 'ev' / 'eval.md').read_text()
    assert '| l2 | 0.5 |' in md and 'certified, smoothing σ 0.25' in md
    assert "beyond smoothing's reach, σ Φ⁻¹(α^(1/n)) = 0.283" in md
    run = tmp_path / 'run'
    assert json.loads((run / 'robustness.json').read_text())['attacks']['l2'] == a['l2']
    scores = load_robustness(run)
    assert scores['pgd_l2@1'] == a['l2']['1'] and scores['pgd_linf@0.1'] == a['linf']['0.1']
    card = (run / 'README.md').read_text()
    assert '## Adversarial robustness' in card and '**Not the full protocol:** epsilons' in card
    assert '20 images attacked (the protocol: 200); 5 steps (the protocol: 20)' in card
    assert scores['attack_split'] == 'test' and scores['attack_full_protocol'] is False


def _data(n: int = 6):
    g = torch.Generator().manual_seed(0)
    return torch.utils.data.TensorDataset(torch.rand(n, 1, 8, 8, generator=g), torch.arange(n) % 3)


def test_an_attack_hands_the_model_back_in_its_mode():
    pytest.importorskip('art')
    from timm_lipschitz.robustness.attacks import attack_sweep
    model = TinyNet().train()
    attack_sweep(model, _data(4), norms=['l2'], eps={'l2': [0.5]}, steps=1, max_images=4)
    assert model.training


def test_fewer_square_restarts_are_a_stated_departure_from_the_protocol():
    from timm_lipschitz.evaluate.record import departures
    settings = {'split': 'test', 'max_images': None, 'attacks': {'method': 'autoattack', 'square_restarts': 1}}
    assert departures('attacks', settings, {}) == ["AutoAttack's Square with 1 restart(s) (the protocol: ART's "
                                                   'default)']
    assert departures('attacks', {**settings, 'attacks': {'method': 'autoattack'}}, {}) == []

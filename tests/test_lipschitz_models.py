"""The 1-Lipschitz models (``lip_convnet``, ``cifar_lipresnet_*``) and the checks that make their certificate
trustworthy: the declared constant against the effective weights, the eval cache, the export, the constrained head,
the deterministic certificate against an attack."""
import pytest
import timm
import torch
import torch.nn as nn

import timm_lipschitz  # noqa: F401
from timm_lipschitz.models import LIPSCHITZ_NAMES, to_plain
from timm_lipschitz.robustness.lipschitz import jacobian_norm, margin_certificate
from timm_lipschitz.protocol import LIPSCHITZ_TOLERANCE
from timm_lipschitz.robustness.soundness import SoundnessError, check_certified_unbroken, check_declared

SMALL = {'lip_convnet': {}, 'cifar_lipresnet_xs': {}}


def _model(name='lip_convnet', **kwargs):
    torch.manual_seed(0)
    return timm.create_model(name, **kwargs)


def _data(model, n=16):
    g = torch.Generator().manual_seed(1)
    size = model.pretrained_cfg['input_size']
    return torch.utils.data.TensorDataset(torch.rand(n, *size, generator=g), torch.randint(0, 10, (n,), generator=g))


def _train_a_little(model, steps=3):
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    x, y = _data(model, 32).tensors
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x - 0.5), y).backward()
        opt.step()
    return model.eval()


@pytest.mark.parametrize('name', LIPSCHITZ_NAMES)
def test_every_layer_of_a_trained_model_is_within_its_declared_constant(name):
    model = _train_a_little(_model(name, num_classes=10))
    bound = model.lipschitz_bound()
    assert model.lipschitz_constant() == 1.0  # std 1 in the default cfg: nothing to fold in
    assert bound['bound'] <= 1.0 + LIPSCHITZ_TOLERANCE, bound['factors']
    record = check_declared(model, _data(model, 8), images=4, iterations=10)
    assert record['passed'] and record['jacobian_norm_max'] <= 1.0 + LIPSCHITZ_TOLERANCE


def test_declared_constant_folds_in_the_normalization():
    model = _model()
    assert model.lipschitz_constant(std=(0.25,)) == pytest.approx(4.0)


def test_jacobian_power_iteration_finds_a_linear_maps_norm():
    torch.manual_seed(0)
    layer = nn.Sequential(nn.Flatten(), nn.Linear(12, 5, bias=False))
    sigma = torch.linalg.matrix_norm(layer[1].weight.detach(), ord=2).item()
    found = jacobian_norm(layer, torch.randn(3, 3, 2, 2), iters=50)
    assert found == pytest.approx(torch.full((3,), sigma), rel=1e-3)


def test_scaled_effective_weights_are_caught():
    """The cached copy the eval forward runs, with one layer's weights doubled: never certified."""
    model = _train_a_little(_model())
    data = _data(model, 8)
    check_declared(model, data, images=4, iterations=10)
    with torch.no_grad():
        model.effective().stage1[0].weight.mul_(2)  # the cache, not the parameters: the cache stays
    with pytest.raises(SoundnessError, match='effective layers'):
        check_declared(model, data, images=4, iterations=10)


def test_scaled_export_is_caught():
    model = _train_a_little(_model())
    plain = to_plain(model)
    with torch.no_grad():
        plain.fc.weight.mul_(2)
    with pytest.raises(SoundnessError):
        check_declared(plain, _data(model, 8), images=4, iterations=10)


def test_halved_declared_constant_is_caught(monkeypatch):
    model = _train_a_little(_model())
    monkeypatch.setattr(type(model), 'lipschitz_constant', lambda self, *a, **k: 0.5)
    with pytest.raises(SoundnessError, match='declares the Lipschitz constant 0.5'):
        check_declared(model, _data(model, 8), images=4, iterations=10)


def test_reset_classifier_keeps_the_head_constrained():
    model = _train_a_little(_model())
    model.reset_classifier(5)
    assert not type(model.fc) is nn.Linear
    model.eval()
    check_declared(model, _data(model, 8), images=4, iterations=10)
    # what a plain nn.Linear head would do to the declaration: caught
    model.fc = nn.Linear(model.head_hidden_size, 5)
    with torch.no_grad():
        model.fc.weight.mul_(10)
    with pytest.raises(SoundnessError):
        check_declared(model, _data(model, 8), images=4, iterations=10)


@pytest.mark.parametrize('name', LIPSCHITZ_NAMES[:2])
def test_eval_cache_is_computed_once_and_dropped_when_weights_change(name):
    model = _model(name)
    x = _data(model, 4).tensors[0]
    model.eval()
    first = model.effective()
    assert model.effective() is first  # computed once
    _train_a_little(model, steps=1)   # an optimizer step
    with torch.no_grad():
        cached = model(x)
        model.train()
        fresh = model(x)               # the constrained layers, computed from the parameters now
        model.eval()
    torch.testing.assert_close(cached, fresh)
    other = _train_a_little(_model(name), steps=2)
    before = model.effective()
    model.load_state_dict(other.state_dict())
    assert model.effective() is not before
    with torch.no_grad():
        torch.testing.assert_close(model(x), other(x))


@pytest.mark.parametrize('name', LIPSCHITZ_NAMES[:2])
def test_export_to_plain_layers_gives_the_same_outputs(name):
    model = _train_a_little(_model(name))
    x = _data(model, 4).tensors[0]
    plain = to_plain(model)
    assert not any(hasattr(m, 'reparam') and m.reparam is not None for m in plain.modules())
    exported = torch.export.export(plain, (x,))
    with torch.no_grad():
        torch.testing.assert_close(exported.module()(x), model(x))
        torch.testing.assert_close(plain(x), model(x))


def test_certified_image_broken_by_an_attack_stops_the_evaluation():
    radius = torch.tensor([0.6, 0.3, -1.0, 0.7])
    ok = check_certified_unbroken(radius, {'0.5': [True, False, False, True]})
    assert ok['violations'] == 0 and ok['checked']['0.5']['certified'] == 2
    with pytest.raises(SoundnessError, match='certified at l2 radius 0.5 were broken'):
        check_certified_unbroken(radius, {'0.5': [True, True, False, False]})


def test_margin_certificate_divides_by_the_declared_constant_with_its_tolerance():
    class Fixed(nn.Module):
        pretrained_cfg = {'mean': (0.0,), 'std': (1.0,)}

        def forward(self, x):
            return torch.stack([x.flatten(1).sum(1) * 0 + 3.0, x.flatten(1).sum(1) * 0 + 1.0], 1)

    data = torch.utils.data.TensorDataset(torch.zeros(2, 1, 2, 2), torch.tensor([0, 1]))
    cert = margin_certificate(Fixed(), data, 2.0, radii=(0.0, 0.7))
    expected = 2.0 / (2 ** 0.5 * 2.0 * (1 + LIPSCHITZ_TOLERANCE))
    assert cert['radius'][0] == pytest.approx(expected, rel=1e-5) and cert['radius'][1] == -1.0
    assert cert['certified_accuracy'] == [50.0, 50.0] and cert['num_images'] == 2


def _lip_run(tmp_path):
    from timm_lipschitz.train import train
    return train({'name': 'lip', 'model': {'name': 'lip_convnet', 'mean': [0.5], 'std': [1.0]},
                  'loss': {'name': 'lipschitz_margin', 'epsilon': 0.25, 'temperature': 8.0}, 'steps': 30,
                  'batch_size': 32, 'data': {'name': 'digits', 'input_size': [1, 8, 8], 'fast_path': True},
                  'log_with': [], 'eval': {'sigmas': [0.0, 0.3], 'every_epochs': 0},
                  'output_dir': str(tmp_path / 'run'), 'optimizer': {'name': 'adam', 'lr': 0.01}}, progress=False)


def test_eval_certify_and_attack_report_the_deterministic_certificate_everywhere(tmp_path, drawn):
    """eval --certify --attack: the certificate on every test image beside smoothing and PGD, both soundness checks
    recorded, and the folder's robustness.json, metadata summary and card carrying it (read back)."""
    import json

    from timm_lipschitz.cli import main
    from timm_lipschitz.evaluate import read_eval
    from timm_lipschitz.hub import load_robustness
    s = _lip_run(tmp_path)
    assert main(['eval', s['output_dir'], '--certify', '--attack', 'l2', '--eps', 'l2=0.1,0.25',
                 '--attack-images', '20', '--attack-steps', '5', '--certify-images', '5', '--n', '50', '--n0', '10',
                 '--sigmas', '0', '--out', str(tmp_path / 'ev'), '--device', 'cpu', '--no-progress']) == 0
    e = read_eval(tmp_path / 'ev' / 'eval.json')['lip']
    cert, sound = e['margin_certificate'], e['soundness']
    assert cert['lipschitz_bound'] == 1.0 and cert['num_images'] == len(cert['radius']) == e['images']['num_images']
    assert cert['certified_accuracy'][0] == pytest.approx(e['sweep']['accuracy'][0], abs=1e-6)  # same forward
    assert sound['passed'] and sound['effective_layer_bound'] <= 1.0 + LIPSCHITZ_TOLERANCE
    assert sound['certified_vs_attack']['violations'] == 0
    assert set(sound['certified_vs_attack']['checked']) == {'0.1', '0.25'}
    md = (tmp_path / 'ev' / 'eval.md').read_text()
    table = md.split('## Certified and attacked accuracy (%) at l2 radius')[1]
    det = 100.0 * sum(r >= 0.25 for r in cert['radius']) / len(cert['radius'])
    assert f"| lip | 0.25 | {det:.1f} |" in table
    run = tmp_path / 'run'  # the whole test split under the protocol's split: recorded in the folder
    recorded = json.loads((run / 'robustness.json').read_text())['deterministic_certificate']
    assert recorded['certified_accuracy'] == cert['certified_accuracy'] and 'radius' not in recorded
    assert recorded['protocol']['full_protocol'] and recorded['soundness']['passed']
    scores = load_robustness(run)
    assert scores['deterministic_certified']['0.5'] == cert['certified_accuracy'][cert['radii'].index(0.5)]
    card = (run / 'README.md').read_text()
    assert '## Deterministic certificate (Lipschitz margin)' in card and 'L = 1' in card
    assert f"value: {round(cert['certified_accuracy'][2], 2)}" in card.split('---')[1]  # the model-index metric
    from timm_lipschitz.hub.publish import publish
    published = (publish(run, 'org/lip', dry_run=True, out_dir=tmp_path / 'pub') / 'README.md').read_text()
    assert '## Deterministic certificate (Lipschitz margin)' in published  # the Hub card keeps it


def test_a_model_that_breaks_its_declaration_stops_the_evaluation(tmp_path, monkeypatch, capsys):
    """A bug, never a result: the internal-error exit with the check's message, and nothing certified or recorded."""
    from timm_lipschitz.cli import main
    from timm_lipschitz.models import LipConvNet
    s = _lip_run(tmp_path)
    monkeypatch.setattr(LipConvNet, 'lipschitz_constant', lambda self, *a, **k: 0.25)
    assert main(['eval', s['output_dir'], '--certify', '--certify-images', '2', '--n', '20', '--n0', '10',
                 '--sigmas', '0', '--out', str(tmp_path / 'ev'), '--device', 'cpu', '--no-progress']) == 70
    assert 'SoundnessError: LipConvNet declares the Lipschitz constant 0.25' in capsys.readouterr().err
    assert not (tmp_path / 'ev' / 'eval.json').exists()
    assert 'deterministic_certificate' not in (tmp_path / 'run' / 'robustness.json').read_text()


@pytest.mark.parametrize('objective', ['cross_entropy', 'binary_cross_entropy', 'lipschitz_hinge', 'hkr',
                                       'lipschitz_margin', 'gaussian_augmentation', 'stability', 'consistency',
                                       'pgd_adversarial', 'trades'])
def test_every_objective_trains_a_1_lipschitz_net(objective):
    """The same objectives on the same architecture: a step moves the weights, and the model stays within its
    declared constant (the adversarial searches run the eval-mode cached copy, without gradient into the weights)."""
    from timm_lipschitz.losses import create_loss
    kwargs = {'lipschitz_hinge': dict(perturbation='adversarial', radius=0.5, steps=2),
              'pgd_adversarial': dict(steps=2), 'trades': dict(steps=2)}.get(objective, {})
    model = _model('lip_convnet', img_size=8, pretrained_cfg_overlay={'input_size': (1, 8, 8)})
    x, y = _data(model, 8).tensors
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model.train()
    out = create_loss(objective, seed=0, **kwargs)(model, x, y)
    out.loss.backward()
    opt.step()
    assert torch.isfinite(out.loss) and model.training
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    check_declared(model.eval(), _data(model, 4), images=4, iterations=5)


def test_maxmin_fast_path_equals_orthogoniums():
    from orthogonium.layers import MaxMin as PairSort

    from timm_lipschitz.models.lipnet import MaxMin
    z = torch.randn(3, 8, 5, 5)
    with torch.no_grad():
        torch.testing.assert_close(MaxMin()(z), PairSort()(z), rtol=0, atol=0)
        torch.testing.assert_close(MaxMin()(z.flatten(1)), PairSort()(z.flatten(1)), rtol=0, atol=0)

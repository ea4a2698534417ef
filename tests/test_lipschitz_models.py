"""The 1-Lipschitz models (``lip_convnet``, ``cifar_lipresnet_*``): their layers and head options, the export the
evaluation runs, the MaxMin step, and the deterministic certificate reported by ``eval`` (the certificate's rules
and checks themselves: ``tests/test_certificates.py``)."""
import pytest
import timm
import torch
import torch.nn as nn
from timm_lipschitz.certificates import DETERMINISTIC_KEY, check_declared
from timm_lipschitz.models import LIPSCHITZ_NAMES, to_plain
from timm_lipschitz.modes import for_evaluation
from timm_lipschitz.protocol import LIPSCHITZ_TOLERANCE

import timm_lipschitz  # noqa: F401


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


def test_a_training_step_in_eval_mode_gets_the_same_gradients_as_in_train_mode():
    """No implicit eval cache: a BatchNorm-free net fine-tuned in eval mode trains exactly as in train mode (0.2.0
    ran a cached plain copy in eval mode, and no gradient reached the parameters)."""
    model = _train_a_little(_model(head='unit_rows'), steps=1)
    x, y = _data(model, 8).tensors
    grads = {}
    for mode in (True, False):
        model.train(mode)
        model.zero_grad()
        nn.functional.cross_entropy(model(x - 0.5), y).backward()
        grads[mode] = [p.grad.clone() for p in model.parameters()]
        assert all(g.abs().sum() > 0 for g in grads[mode])
    for a, b in zip(grads[True], grads[False]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_the_evaluation_runs_the_plain_export_and_the_model_stays_exact():
    model = _train_a_little(_model())
    x = _data(model, 4).tensors[0]
    runner = for_evaluation(model)
    assert runner is not model and not any(hasattr(m, 'reparam') and m.reparam is not None for m in runner.modules())
    with torch.no_grad():
        torch.testing.assert_close(runner(x), model(x))
    plain_resnet = timm.create_model('cifar_resnet20')
    assert for_evaluation(plain_resnet) is plain_resnet


@pytest.mark.parametrize('name', LIPSCHITZ_NAMES)
@pytest.mark.parametrize('head', ['orthogonal', 'unit_rows'])
def test_the_head_option_and_reset_classifier_keep_the_heads_kind(name, head):
    model = _model(name, head=head, num_classes=10)
    kind = type(model.fc)
    assert kind.__name__ == {'orthogonal': 'OrthoLinear', 'unit_rows': 'UnitRowLinear'}[head]
    model.reset_classifier(5)
    assert type(model.fc) is kind and model.num_classes == 5
    w = model.fc.constrained_weight().detach()
    if head == 'unit_rows':
        torch.testing.assert_close(w.norm(dim=1), torch.ones(5))
    else:
        torch.testing.assert_close(w @ w.T, torch.eye(5), atol=1e-6, rtol=0)
    with pytest.raises(Exception, match="head='free' is not allowed; use one of"):
        _model(name, head='free')


def test_the_4c3f_layout_and_its_checks():
    model = _model('lip_convnet', widths=(32, 32, 64, 64), strides=(1, 2, 1, 2), hidden_dim=(512, 512))
    assert [f['reduction'] for f in model.feature_info] == [1, 2, 2, 4]
    assert model.fc1.in_features == 64 * 7 * 7 and model.fc2.in_features == 512 and model.head_hidden_size == 512
    assert model(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    assert [n for n, _ in model.lipschitz_factors((28, 28))] == ['conv1', 'conv2', 'conv3', 'conv4', 'fc1', 'fc2', 'fc']
    for bad, match in (({'widths': (32, 33, 64)}, 'widths='), ({'strides': (1, 3, 2)}, 'strides='),
                       ({'hidden_dim': 0}, 'hidden_dim='), ({'widths': ()}, 'widths=')):
        with pytest.raises(Exception, match=match):
            _model('lip_convnet', **bad)


def test_maxmin_equals_orthogoniums_with_its_gradients():
    from orthogonium.layers import MaxMin as PairSort

    from timm_lipschitz.models.lipnet import MaxMin
    z = torch.randn(3, 8, 5, 5, dtype=torch.double, requires_grad=True)
    with torch.no_grad():
        torch.testing.assert_close(MaxMin()(z), PairSort()(z), rtol=0, atol=0)
        torch.testing.assert_close(MaxMin()(z.flatten(1)), PairSort()(z.flatten(1)), rtol=0, atol=0)
    g = torch.randn(3, 8, 5, 5, dtype=torch.double)
    ours, = torch.autograd.grad(MaxMin()(z), z, g)
    theirs, = torch.autograd.grad(PairSort()(z), z, g)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    assert torch.autograd.gradcheck(MaxMin(), (z,)) and torch.autograd.gradgradcheck(MaxMin(), (z,))


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
    cert, sound = e[DETERMINISTIC_KEY], e['soundness']
    assert cert['lipschitz']['logits'] == 1.0 and cert['lipschitz']['head'] == 'orthogonal'
    assert cert['num_images'] == len(cert['radius']) == len(cert['rule']) == e['images']['num_images']
    assert cert['certified_accuracy'][0] == pytest.approx(e['sweep']['accuracy'][0], abs=1e-6)  # same forward
    assert sound['passed'] and sound['effective_layer_bound'] <= 1.0 + LIPSCHITZ_TOLERANCE
    assert sound['certified_vs_attack']['violations'] == 0
    assert set(sound['certified_vs_attack']['checked']) == {'0.1', '0.25'}
    md = (tmp_path / 'ev' / 'eval.md').read_text()
    table = md.split('## Certified and attacked accuracy (%) at l2 radius')[1]
    det = 100.0 * sum(r >= 0.25 for r in cert['radius']) / len(cert['radius'])
    assert f"| lip | 0.25 | {det:.1f} |" in table
    run = tmp_path / 'run'  # the whole test split under the protocol's split: recorded in the folder
    recorded = json.loads((run / 'robustness.json').read_text())[DETERMINISTIC_KEY]
    assert recorded['certified_accuracy'] == cert['certified_accuracy'] and 'radius' not in recorded
    assert 'rule' not in recorded and sum(recorded['rules'].values()) == sum(r >= 0 for r in cert['radius'])
    assert recorded['protocol']['full_protocol'] and recorded['soundness']['passed']
    scores = load_robustness(run)
    summary = scores[DETERMINISTIC_KEY]
    assert summary['certified']['0.5'] == cert['certified_accuracy'][cert['radii'].index(0.5)]
    assert summary['lipschitz'] == 1.0 and summary['head'] == 'orthogonal'
    card = (run / 'README.md').read_text()
    assert '## Deterministic certificate (Lipschitz margin)' in card and '(the whole-model rule, L = 1)' in card
    assert 'L_body = 1, the declared constant of the layers before the orthogonal head' in card
    assert f"value: {round(cert['certified_accuracy'][2], 2)}" in card.split('---')[1]  # the model-index metric
    smooth = json.loads((run / 'robustness.json').read_text())['smoothing']  # smoothing beside it, same images
    assert 'rows' not in smooth and smooth['num_images'] == 5 and smooth['n'] == 50
    positions = [row['index'] for row in e['smoothing']['rows']]
    assert smooth['deterministic_same_images'][1] == pytest.approx(
        100 * sum(cert['radius'][i] >= 0.25 for i in positions) / 5)
    assert '## Randomized smoothing on the same images' in card and '| deterministic certificate |' in card
    assert scores['smoothing']['certified']['0.25'] == smooth['certified_accuracy'][1]
    assert scores['smoothing']['deterministic_same_images']['0.25'] == smooth['deterministic_same_images'][1]
    from timm_lipschitz.hub.publish import publish
    published = (publish(run, 'org/lip', dry_run=True, out_dir=tmp_path / 'pub') / 'README.md').read_text()
    assert '## Deterministic certificate (Lipschitz margin)' in published  # the Hub card keeps it


def test_a_model_that_breaks_its_declaration_stops_the_evaluation(tmp_path, monkeypatch, capsys):
    """A bug, never a result: the internal-error exit with the check's message, and nothing certified or recorded."""
    from timm_lipschitz.cli import main
    from timm_lipschitz.models import LipConvNet
    s = _lip_run(tmp_path)
    monkeypatch.setattr(LipConvNet, 'declared_lipschitz', lambda self, hw: (0.25, 0.25))
    assert main(['eval', s['output_dir'], '--certify', '--certify-images', '2', '--n', '20', '--n0', '10',
                 '--sigmas', '0', '--out', str(tmp_path / 'ev'), '--device', 'cpu', '--no-progress']) == 70
    assert 'SoundnessError: LipConvNet declares the Lipschitz constants body 0.25' in capsys.readouterr().err
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
    check_declared(to_plain(model.eval()), _data(model, 4), images=4, iterations=5)

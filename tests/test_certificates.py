"""The deterministic certificate's one home (:mod:`timm_lipschitz.certificates`): the declaration with the input
normalization folded in once, the whole-model and per-pair radius rules against exact geometry, the margin objective
training for the same rule, the public ``certify`` API, the soundness checks, and the record's one name."""
from __future__ import annotations

import math

import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm_lipschitz import certificates as C
from timm_lipschitz.losses import create_loss
from timm_lipschitz.models import to_plain
from timm_lipschitz.models._bounds import DeclaresLipschitz
from timm_lipschitz.protocol import LIPSCHITZ_TOLERANCE
from timm_lipschitz.robustness.lipschitz import pgd_lower_bound

import timm_lipschitz

TAG = 'lip_convnet.lipschitz_margin_e075_tau8_fmnist'


class LinearHead(DeclaresLipschitz, nn.Module):
    """f(x) = W flatten(x) + b: the body is the identity (L_body 1), so every radius is known exactly."""

    lipschitz_by_design = True

    def __init__(self, weight: torch.Tensor, head: str = 'unit_rows'):
        super().__init__()
        self.fc = nn.Linear(weight.shape[1], weight.shape[0])
        with torch.no_grad():
            self.fc.weight.copy_(weight)
            self.fc.bias.uniform_(-0.1, 0.1)
        self.head, self.num_classes = head, weight.shape[0]
        self.pretrained_cfg = {'input_size': (1, 1, weight.shape[1]), 'mean': (0.0,), 'std': (1.0,)}

    def get_classifier(self):
        return self.fc

    def forward_features(self, x):
        return x.flatten(1)

    def forward_head(self, x, pre_logits: bool = False):
        return x if pre_logits else self.fc(x)

    def forward(self, x):
        return self.forward_head(self.forward_features(x))

    def lipschitz_factors(self, hw):
        return [('body', 1.0), ('fc', torch.linalg.matrix_norm(self.fc.weight.detach().double(), 2).item())]

    def declared_lipschitz(self, hw):
        return 1.0, float(self.num_classes) ** 0.5

    def head_rows(self):
        return self.head


def _unit_rows(classes=4, dim=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(classes, dim, generator=g)
    w[1] = -w[0] + 0.05 * torch.randn(dim, generator=g)  # rows 0 and 1 nearly antipodal: ||w_0 - w_1|| near 2
    return w / w.norm(dim=1, keepdim=True)


def _exact_distance(model: LinearHead, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The l2 distance from each x to the boundary of its class region {f_y >= f_j for all j} (a polytope: the
    nearest facet hyperplane), for a linear classifier."""
    w, b = model.fc.weight.detach().double(), model.fc.bias.detach().double()
    z = x.flatten(1).double() @ w.T + b
    gap = z.gather(1, y.view(-1, 1)) - z
    dist = gap / (w[y].unsqueeze(1) - w.unsqueeze(0)).norm(dim=2)
    return dist.scatter(1, y.view(-1, 1), math.inf).min(1).values


# ---- the declaration ----------------------------------------------------------------------------------------------
def test_the_declaration_folds_the_std_in_once_for_body_and_logits():
    model = timm.create_model('lip_convnet', head='unit_rows')
    own = C.declaration(model)
    assert (own.body, own.logits, own.head, own.by_design) == (1.0, pytest.approx(10 ** 0.5), 'unit_rows', True)
    quarter = C.declaration(model, mean=(0.5,), std=(0.25,))
    assert (quarter.body, quarter.logits) == (pytest.approx(4.0), pytest.approx(4 * 10 ** 0.5))
    assert C.declaration(torch.nn.Linear(2, 2)) is None and not C.declares(torch.nn.Linear(2, 2))


@pytest.mark.parametrize('tag', ['cifar_resnet20.lipschitz_hinge_s050_b1_l001_digits',
                                 'mnist_convnet.lipschitz_hinge_s075_b10_l0005_mnist5k'])
def test_an_ordinary_nets_declaration_is_its_measured_product_and_bounds_what_pgd_finds(tag):
    model = timm.create_model(tag, pretrained=True).eval()
    decl = C.declaration(model)
    factors = model.lipschitz_factors(tuple(model.pretrained_cfg['input_size'][1:]))
    assert not decl.by_design
    assert decl.logits == pytest.approx(math.prod(v for _, v in factors) / min(model.pretrained_cfg['std']))
    size = model.pretrained_cfg['input_size']
    data = torch.utils.data.TensorDataset(torch.rand(16, *size), torch.zeros(16, dtype=torch.long))
    assert 0 < pgd_lower_bound(model, data, radius=0.5, steps=10, max_images=16)['max'] <= decl.logits
    half = C.declaration(model, mean=model.pretrained_cfg['mean'], std=[s / 2 for s in model.pretrained_cfg['std']])
    assert half.logits == pytest.approx(2 * decl.logits, rel=1e-12)
    with torch.no_grad():
        model.fc.weight.mul_(2)
    assert C.declaration(model).logits == pytest.approx(2 * decl.logits, rel=1e-9)  # read from the weights
    # comparing that product with itself could not fail: the check does not report it
    record = C.check_declared(model, data, images=4, iterations=5)
    assert 'effective_layer_bound' not in record and 'effective_body_bound' not in record


# ---- the radius rules ---------------------------------------------------------------------------------------------
def test_the_per_pair_radius_is_the_exact_distance_to_the_boundary_of_a_linear_model():
    """A head of unit rows on an identity body: the certified radius is the exact distance over (1 + tol). Fails if
    a head row is mis-scaled, or if the margin is divided by sqrt(2) as for a 1-Lipschitz head (unsound here: rows
    0 and 1 are nearly antipodal, ||w_0 - w_1|| near 2)."""
    torch.manual_seed(0)
    model = LinearHead(_unit_rows()).eval()
    x = torch.randn(64, 1, 1, 6)
    logits = model(x)
    y = logits.argmax(1)
    radius, rule = C.radii(logits, y, C.declaration(model), C.linear_head_weight(model))
    exact = _exact_distance(model, x, y)
    assert (radius < exact).all()  # sound: the tolerance (1e-3) exceeds float32's rounding of the logits
    torch.testing.assert_close(radius * (1 + LIPSCHITZ_TOLERANCE), exact, rtol=1e-5, atol=1e-7)
    assert (rule == C.RULES.index('per_pair')).all()
    # the rule is tight: a step just past the radius, toward the nearest boundary, changes the label
    w = model.fc.weight.detach().double()
    i = 0
    z = logits[i].double()
    j = min((k for k in range(4) if k != y[i]), key=lambda k: (z[y[i]] - z[k]) / (w[y[i]] - w[k]).norm())
    direction = (w[j] - w[y[i]]) / (w[j] - w[y[i]]).norm()
    past = x[i].double().flatten() + (exact[i] * 1.001) * direction
    assert model.fc(past.float()).argmax().item() != y[i]
    before = x[i].double().flatten() + (radius[i] * 0.999) * direction
    assert model.fc(before.float()).argmax().item() == y[i]


def test_a_radius_is_never_below_the_whole_model_rule_and_records_its_rule():
    model = timm.create_model(TAG, pretrained=True).eval()
    x, y = torch.rand(32, 1, 28, 28), torch.randint(0, 10, (32,))
    logits = model(x - 0.5)
    decl = C.declaration(model)
    with_pair, rule = C.radii(logits, y, decl, C.linear_head_weight(model))
    whole, whole_rule = C.radii(logits, y, decl)
    assert (with_pair >= whole).all() and set(whole_rule.tolist()) <= {-1, 0}
    assert ((rule == -1) == (logits.argmax(1) != y)).all()
    # an orthogonal head: ||w_y - w_j|| = sqrt(2), the two rules agree to rounding
    torch.testing.assert_close(with_pair, whole, rtol=1e-6, atol=1e-9)


def test_the_margin_objective_and_the_evaluation_go_through_the_same_rule(monkeypatch):
    """Both call :func:`scales`; and a margin the objective's shifted logits keep (true logit on top) is a margin
    the evaluation certifies at epsilon."""
    calls = []
    original = C.scales
    monkeypatch.setattr(C, 'scales', lambda *a, **k: calls.append(a[3]) or original(*a, **k))
    torch.manual_seed(1)
    model = timm.create_model('lip_convnet', head='unit_rows', img_size=8, pretrained_cfg_overlay={
        'input_size': (1, 8, 8)})
    x, y = torch.rand(64, 1, 8, 8), torch.randint(0, 10, (64,))
    with torch.no_grad():
        model.fc.weight.mul_(torch.rand(10, 1) + 0.5)  # free weights of any scale: the head normalizes its rows
    objective = create_loss('lipschitz_margin', epsilon=0.01, lipschitz='model')
    out = objective(model, x, y)
    assert calls == ['per_pair']
    shift = C.margin_shift(model, out.logits, y, 0.01, 'model')
    kept = (out.logits + shift).argmax(1) == y
    radius, _ = C.radii(out.logits, y, C.declaration(model), C.linear_head_weight(model), tolerance=0.0)
    assert calls[-1] == 'per_pair' and calls.count('whole_model') == 1
    assert kept.any() and (radius[kept] >= 0.01 - 1e-7).all()


def test_the_objectives_std_reaches_the_margin():
    """lipschitz='model' with std 0.5: L = 2 (1 / 0.5), not the model's own std 1."""
    model = timm.create_model('lip_convnet', img_size=8, pretrained_cfg_overlay={'input_size': (1, 8, 8)}).eval()
    x, y = torch.rand(6, 1, 8, 8), torch.arange(6) % 10
    out = create_loss('lipschitz_margin', epsilon=0.25, lipschitz='model', mean=[0.5], std=[0.5])(model, x, y)
    logits = model((x - 0.5) / 0.5)
    torch.testing.assert_close(out.logits, logits)
    expected = F.cross_entropy(logits + math.sqrt(2) * 2.0 * 0.25 * (1 - F.one_hot(y, 10)), y)
    torch.testing.assert_close(out.loss, expected)
    assert out.parts['margin'].item() == pytest.approx(math.sqrt(2) * 2.0 * 0.25)


def test_the_margin_objective_with_a_number_and_an_ordinary_net():
    from timm_lipschitz.recipes import RecipeError, resolve_recipe
    model = timm.create_model('mnist_convnet', num_classes=10, img_size=8, in_chans=1,
                              pretrained_cfg_overlay={'input_size': (1, 8, 8)}).eval()
    x, y = torch.rand(6, 1, 8, 8), torch.arange(6) % 10
    mean, std = model.pretrained_cfg['mean'][0], model.pretrained_cfg['std'][0]
    logits = model((x - mean) / std)
    for lipschitz, L in ((1.0, 1.0), (2.5, 2.5), ('model', C.declaration(model).logits)):
        out = create_loss('lipschitz_margin', epsilon=0.25, lipschitz=lipschitz, temperature=2.0)(model, x, y)
        expected = F.cross_entropy(2.0 * (logits + math.sqrt(2) * L * 0.25 * (1 - F.one_hot(y, 10))), y)
        torch.testing.assert_close(out.loss, expected)
    plain = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    with pytest.raises(ValueError, match="lipschitz='model' is not allowed; Sequential declares no Lipschitz"):
        create_loss('lipschitz_margin', lipschitz='model', mean=(0.5,), std=(0.5,))(plain, x, y)
    with pytest.raises(RecipeError, match="loss.lipschitz='big' is not allowed; lipschitz must be a number > 0 or"):
        resolve_recipe('recipes/digits_lipschitz.yaml', ['loss={"name": "lipschitz_margin", "lipschitz": "big"}'])


# ---- the public API -----------------------------------------------------------------------------------------------
def test_certify_a_batch_with_one_forward_pass_each():
    model = timm.create_model(TAG, pretrained=True).eval()
    g = torch.Generator().manual_seed(0)
    images, labels = torch.rand(16, 1, 28, 28, generator=g), torch.randint(0, 10, (16,), generator=g)
    cert = timm_lipschitz.certify(model, images, labels, eps=(0.0, 0.25))
    assert cert.certified.shape == (16, 2) and cert.eps == (0.0, 0.25)
    assert torch.equal(cert.certified[:, 0], cert.predicted == labels)
    assert torch.equal(cert.certified[:, 1], cert.radius >= 0.25)
    own = timm_lipschitz.certify(model, images)  # labels omitted: the prediction is certified
    assert (own.radius >= 0).all() and torch.equal(own.predicted, cert.predicted)
    data = torch.utils.data.TensorDataset(images, labels)
    record = C.dataset_certificate(model, data, C.declaration(model), radii_=(0.0, 0.25))
    assert record['radius'] == [round(v, 6) for v in cert.radius.tolist()]
    assert record['certified_accuracy'][1] == pytest.approx(100 * cert.certified[:, 1].float().mean().item())
    assert len(record['rule']) == 16 and set(record['rule']) <= set('-wp')
    with pytest.raises(NotImplementedError, match='declares no Lipschitz constant'):
        timm_lipschitz.certify(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10)), images,
                               mean=(0.5,), std=(1.0,))


def test_the_record_has_one_name_and_readers_take_the_old_ones():
    new = {C.DETERMINISTIC_KEY: {'lipschitz': 1.0, 'certified': {'0.5': 44.0}, 'num_images': 10}}
    old = {'lipschitz_constant': 1.0, 'deterministic_certified': {'0.5': 42.6}, 'deterministic_certified_images': 9}
    assert C.read_summary(new)['certified']['0.5'] == 44.0
    assert C.read_summary(old) == {'lipschitz': 1.0, 'certified': {'0.5': 42.6}, 'num_images': 9}
    assert C.read_summary({}) is None
    assert C.eval_entry({'margin_certificate': {'radii': [0]}}) == {'radii': [0]}


# ---- soundness ----------------------------------------------------------------------------------------------------
def _trained(name='lip_convnet', **kwargs):
    torch.manual_seed(0)
    model = timm.create_model(name, **kwargs)
    g = torch.Generator().manual_seed(1)
    size = model.pretrained_cfg['input_size']
    x, y = torch.rand(32, *size, generator=g), torch.randint(0, 10, (32,), generator=g)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(3):
        opt.zero_grad()
        F.cross_entropy(model(x - 0.5), y).backward()
        opt.step()
    return model.eval(), torch.utils.data.TensorDataset(x[:8], y[:8])


@pytest.mark.parametrize('name,head', [('lip_convnet', 'orthogonal'), ('lip_convnet', 'unit_rows'),
                                       ('cifar_lipresnet_xs', 'unit_rows'), ('cifar_lipresnet_s', 'orthogonal')])
def test_a_trained_1_lipschitz_net_passes_every_check(name, head):
    model, data = _trained(name, head=head)
    record = C.check_declared(to_plain(model), data, images=4, iterations=10)
    assert record['passed'] and record['effective_body_bound'] <= 1 + LIPSCHITZ_TOLERANCE
    assert record['body_jacobian_norm_max'] <= 1 + LIPSCHITZ_TOLERANCE
    assert record['head_constraint_error'] < 1e-5


@pytest.mark.parametrize('head', ['orthogonal', 'unit_rows'])
def test_a_head_row_doubled_is_caught(head):
    model, data = _trained(head=head)
    plain = to_plain(model)
    with torch.no_grad():
        plain.fc.weight[3].mul_(2)
    with pytest.raises(C.SoundnessError, match=f'its {head} head is off its constraint'):
        C.check_declared(plain, data, images=4, iterations=5)


def test_scaled_effective_weights_and_a_halved_declaration_are_caught(monkeypatch):
    model, data = _trained()
    plain = to_plain(model)
    with torch.no_grad():
        plain.stage1[0].weight.mul_(2)
    with pytest.raises(C.SoundnessError, match='effective_body_bound'):
        C.check_declared(plain, data, images=4, iterations=5)
    monkeypatch.setattr(type(model), 'declared_lipschitz', lambda self, hw: (0.02, 0.02))
    with pytest.raises(C.SoundnessError, match='declares the Lipschitz constants body 0.02 / logits 0.02'):
        C.check_declared(model, data, images=4, iterations=5)


def test_a_plain_linear_head_put_in_place_is_caught():
    model, data = _trained()
    model.reset_classifier(5)
    assert type(model.fc) is not nn.Linear  # the model's own kind of head
    C.check_declared(model, data, images=4, iterations=5)
    model.fc = nn.Linear(model.head_hidden_size, 5)
    with torch.no_grad():
        model.fc.weight.mul_(10)
    with pytest.raises(C.SoundnessError):
        C.check_declared(model, data, images=4, iterations=5)


def test_certified_image_broken_by_an_attack_stops_the_evaluation():
    radius = torch.tensor([0.6, 0.3, -1.0, 0.7])
    ok = C.check_certified_unbroken(radius, {'0.5': [True, False, False, True]})
    assert ok['violations'] == 0 and ok['checked']['0.5']['certified'] == 2
    with pytest.raises(C.SoundnessError, match='certified at l2 radius 0.5 were broken'):
        C.check_certified_unbroken(radius, {'0.5': [True, True, False, False]})


def test_the_constraint_holds_after_a_bf16_training_step():
    """Under bf16 autocast the reparametrizations run in float32: the constrained weights are the float32 ones, and
    the trained weights still satisfy the declaration."""
    model, data = _trained(head='unit_rows')
    model.train()
    x, y = data.tensors
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        w_auto = model.fc1.constrained_weight()
        loss = create_loss('lipschitz_margin', epsilon=0.5, lipschitz='model', temperature=8.0)(model, x, y).loss
    assert w_auto.dtype == torch.float32
    torch.testing.assert_close(w_auto, model.fc1.constrained_weight(), rtol=0, atol=0)
    loss.backward()
    opt.step()
    assert C.check_declared(to_plain(model.eval()), data, images=4, iterations=5)['passed']

"""Each model declares its own Lipschitz constant (issue 30's interface): the evaluation's spectral bound reads it
from the model, the normalization is folded in, and it is never below what a PGD search finds."""
from __future__ import annotations

import pytest
import timm
import torch

import timm_lipschitz  # noqa: F401
from timm_lipschitz.models._bounds import DeclaresLipschitz
from timm_lipschitz.robustness.lipschitz import pgd_lower_bound, spectral_upper_bound


@pytest.mark.parametrize('tag', ['cifar_resnet20.lipschitz_hinge_s050_b1_l001_digits',
                                 'mnist_convnet.lipschitz_hinge_s075_b10_l0005_mnist5k'])
def test_the_declared_constant_bounds_what_pgd_finds_and_is_what_the_evaluation_reads(tag):
    model = timm.create_model(tag, pretrained=True).eval()
    assert isinstance(model, DeclaresLipschitz)
    declared = model.lipschitz_constant()
    assert spectral_upper_bound(model)['bound'] == declared
    size = model.pretrained_cfg['input_size']
    data = torch.utils.data.TensorDataset(torch.rand(16, *size), torch.zeros(16, dtype=torch.long))
    found = pgd_lower_bound(model, data, radius=0.5, steps=10, max_images=16)['max']
    assert 0 < found <= declared
    # dividing by a std half as large doubles the constant of the logits w.r.t. pixels
    std = model.pretrained_cfg['std']
    assert model.lipschitz_constant(std=[s / 2 for s in std]) == pytest.approx(2 * declared, rel=1e-12)


def test_a_model_scaled_up_declares_a_larger_constant_and_one_without_a_declaration_is_refused():
    model = timm.create_model('mnist_convnet', num_classes=10, img_size=8, in_chans=1,
                              pretrained_cfg_overlay={'input_size': (1, 8, 8)}).eval()
    before = model.lipschitz_constant()
    with torch.no_grad():
        model.fc.weight.mul_(2)
    assert model.lipschitz_constant() == pytest.approx(2 * before, rel=1e-9)  # read from the weights, never cached
    plain = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    plain.pretrained_cfg = {'input_size': (1, 8, 8), 'mean': (0.5,), 'std': (0.5,)}
    with pytest.raises(NotImplementedError, match='declares none'):
        spectral_upper_bound(plain)


def test_the_lipschitz_margin_objective_lowers_the_true_logit_by_sqrt2_L_epsilon():
    import math

    import torch.nn.functional as F

    from timm_lipschitz.losses import create_loss
    from timm_lipschitz.recipes import RecipeError, resolve_recipe
    model = timm.create_model('mnist_convnet', num_classes=10, img_size=8, in_chans=1,
                              pretrained_cfg_overlay={'input_size': (1, 8, 8)}).eval()
    x, y = torch.rand(6, 1, 8, 8), torch.arange(6) % 10
    mean, std = model.pretrained_cfg['mean'][0], model.pretrained_cfg['std'][0]
    logits = model((x - mean) / std)
    for lipschitz, L in ((1.0, 1.0), (2.5, 2.5), ('model', model.lipschitz_constant())):
        out = create_loss('lipschitz_margin', epsilon=0.25, lipschitz=lipschitz)(model, x, y)
        shifted = logits - math.sqrt(2) * L * 0.25 * F.one_hot(y, 10)
        torch.testing.assert_close(out.loss, F.cross_entropy(shifted, y))
        assert out.parts['margin'].item() == pytest.approx(math.sqrt(2) * L * 0.25)
        torch.testing.assert_close(out.logits, logits)
    plain = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    with pytest.raises(ValueError, match="lipschitz='model' is not allowed; Sequential declares no Lipschitz"):
        create_loss('lipschitz_margin', lipschitz='model', mean=(0.5,), std=(0.5,))(plain, x, y)
    with pytest.raises(RecipeError, match="loss.lipschitz='big' is not allowed; lipschitz must be a number > 0 or"):
        resolve_recipe('recipes/digits_lipschitz.yaml', ['loss={"name": "lipschitz_margin", "lipschitz": "big"}'])


def test_the_margin_temperature_scales_the_shifted_logits_inside_the_ce():
    import math

    import torch.nn.functional as F

    from timm_lipschitz.losses import create_loss
    model = timm.create_model('lip_convnet', img_size=8, pretrained_cfg_overlay={'input_size': (1, 8, 8)}).eval()
    x, y = torch.rand(6, 1, 8, 8), torch.arange(6) % 10
    logits = model(x - 0.5)
    out = create_loss('lipschitz_margin', epsilon=0.5, temperature=8.0)(model, x, y)
    shifted = logits - math.sqrt(2) * 0.5 * F.one_hot(y, 10)
    torch.testing.assert_close(out.loss, F.cross_entropy(8.0 * shifted, y))
    with pytest.raises(ValueError, match='temperature=0 is not allowed'):
        create_loss('lipschitz_margin', temperature=0)


def test_hinge_kr_is_orthogoniums_loss_and_resumes_its_running_mean():
    from orthogonium.losses import SoftHKRMulticlassLoss

    from timm_lipschitz.losses import create_loss
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10)).eval()
    with torch.no_grad():
        model[1].weight.mul_(20)  # logits well above min_margin: the running mean then moves the temperature
    batches = [(torch.rand(8, 1, 8, 8), torch.arange(8) % 10) for _ in range(3)]
    args = dict(alpha=0.9, min_margin=0.1, temperature=2.0, mean=(0.5,), std=(1.0,))
    reference = SoftHKRMulticlassLoss(alpha=0.9, min_margin=0.1, temperature=2.0)
    ours = create_loss('hkr', **args)
    for x, y in batches[:2]:
        torch.testing.assert_close(ours(model, x, y).loss, reference(model(x - 0.5), y))
    resumed = create_loss('hkr', **args)
    resumed.load_state_dict(ours.state_dict())  # the running mean sets the temperature: it must continue
    x, y = batches[2]
    torch.testing.assert_close(resumed(model, x, y).loss, ours(model, x, y).loss)
    with pytest.raises(ValueError, match='alpha=1.5 is not allowed'):
        create_loss('hkr', alpha=1.5)
